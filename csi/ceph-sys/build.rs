// Debian's librbd-dev / librados-dev ship no pkg-config files, so link by name.
// The headers these declarations mirror are /usr/include/rbd/librbd.h and
// /usr/include/rados/librados.h (Ceph 16, librbd API 1.16).
fn main() {
    println!("cargo:rustc-link-lib=dylib=rbd");
    println!("cargo:rustc-link-lib=dylib=rados");
    if let Ok(dir) = std::env::var("CEPH_LIB_DIR") {
        println!("cargo:rustc-link-search=native={dir}");
    }
    println!("cargo:rerun-if-env-changed=CEPH_LIB_DIR");
}
