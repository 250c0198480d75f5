;; Test module: waits up to 20 s for the next env.temperature reading (hivebus.get) and
;; publishes twice its value as wasm.doubled; exits 1 when none came.
(module
  (import "hivebus" "get" (func $get (param i32 i32 f64) (result f64)))
  (import "hivebus" "publish" (func $publish (param i32 i32 f64) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
  (memory (export "memory") 1)
  (data (i32.const 64) "env.temperature")  ;; 15 bytes
  (data (i32.const 96) "wasm.doubled")     ;; 12 bytes
  (func (export "_start")
    (local $v f64)
    (local.set $v (call $get (i32.const 64) (i32.const 15) (f64.const 20)))
    (if (f64.ne (local.get $v) (local.get $v))  ;; NaN: nothing came
      (then (call $proc_exit (i32.const 1))))
    (drop (call $publish (i32.const 96) (i32.const 12) (f64.mul (local.get $v) (f64.const 2))))))
