;; A WASM plugin that keeps growing its memory, a page (64 KiB) at a time, touching each page.
;; Under a memory limit memory.grow returns -1 at the limit and the module traps: oom.
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "memory.grow refused\n")
  (func (export "_start")
    (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          (i32.store (i32.mul (local.get $old) (i32.const 65536)) (i32.const 1))
          (br $more))))
    (i32.store (i32.const 0) (i32.const 64))
    (i32.store (i32.const 4) (i32.const 20))
    (drop (call $fd_write (i32.const 2) (i32.const 0) (i32.const 1) (i32.const 8)))
    unreachable))
