;; Test module: traps at once, with almost all of its memory limit to spare (not oom).
(module
  (memory (export "memory") 1)
  (func (export "_start") unreachable))
