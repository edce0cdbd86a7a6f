//! Links glommio's io_uring ring constructor through tally's wrapper, which adds the
//! COOP_TASKRUN and TASKRUN_FLAG setup flags glommio 0.9 cannot be asked for
//! (src/server/glommio_ring_flags.rs explains why).
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--wrap=io_uring_queue_init_params");
    println!("cargo:rerun-if-changed=build.rs");
}
