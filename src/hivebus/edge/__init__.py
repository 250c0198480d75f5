"""The edge stack of one node (WES): the agent, its outbox, goals and housekeeping.

``hivebus node run`` runs ``agent.NodeAgent``. Its parts, one idea per module:

- ``outbox`` / ``forwarder`` / ``uplink``: everything the node produces, durable on the node
  (SQLite WAL, per-node ``nodeseq``) until the hub acknowledged it; exactly once across
  outages and crashes;
- ``localbus`` / ``intake``: the node-local NATS server plugins talk to, and reading routing
  by scope (docs/node-local-bus.md);
- ``toedge`` / ``state`` / ``goals`` / ``runner`` / ``runs`` / ``recent``: goals from the hub,
  stored before the ack, run autonomously (science rules, cron) through an executor;
- ``housekeeping`` / ``sensors`` / ``manifest`` / ``virtual``: registration, heartbeats,
  ``sys.*`` readings, lost sensors, simulated sensors for virtual nodes;
- ``executors``, ``uploads``: how plugins run, and their files shipped to the hub.

Importing this package starts nothing and imports none of its modules.
"""
