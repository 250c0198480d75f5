"""Who may do what on the hub.

Two layers:

- **NATS identities** (``permissions``, ``hub``, ``credentials``): the hub's nats-server
  authenticates every connection. ``service`` (handlers, projector, the platform) and
  ``admin`` (the operator) may do anything; each node ``node-<ID>`` (created by
  ``hivebus node add <ID>``, password printed once, stored bcrypt-hashed) may publish only
  ``data.<ID>.>`` and ``fromedge.<ID>.>`` and read only its own to-edge consumer; a
  connection without credentials is ``public``: it may query, read the platform's own
  events and readings, and send user commands to the gateway -- nothing else, and read
  replies only on an inbox of its own connection. Everyone but ``service`` and ``admin`` is
  decided on, connection by connection, by the hub's auth callout (``callout``).
- **User tokens** (``tokens``): state-changing user actions (push, approve, grant,
  submit, ...) go to the command gateway with a token; the gateway checks it against the
  ``auth.user.*`` events in the log and publishes the action as that user. The ECR and
  the scheduler then decide on that user's rights (owner, reviewer, grants).
"""
