;; A WASM plugin that publishes readings: wasm.counter = 1, 2, 3 on the node-local bus.
;;
;; Text format, so no toolchain is needed: the wasm executor's wasmtime compiles it.
;; Host functions (docs/executors.md): hivebus.publish(name_ptr, name_len, value: f64) -> i32
;; returns 0 when the reading was accepted, -1 when it was refused (its log says why).
(module
  (import "hivebus" "publish" (func $publish (param i32 i32 f64) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "wasm.counter")                          ;; 12 bytes
  (data (i32.const 96) "published 3 readings of wasm.counter\n") ;; 37 bytes
  (data (i32.const 160) "publish refused\n")                   ;; 16 bytes

  (func $print (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))  ;; one iovec at 0: pointer, length
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))

  (func (export "_start")
    (local $i i32)
    (loop $next
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (if (call $publish (i32.const 64) (i32.const 12) (f64.convert_i32_u (local.get $i)))
        (then
          (call $print (i32.const 2) (i32.const 160) (i32.const 16))
          (call $proc_exit (i32.const 1))))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 3))))
    (call $print (i32.const 1) (i32.const 96) (i32.const 37))))
