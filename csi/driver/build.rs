// Generates the CSI v1 client and server from csi/proto/csi.proto (needs protoc,
// installed by scripts/install-deps.sh as Debian's protobuf-compiler).
fn main() {
    println!("cargo:rerun-if-changed=../proto/csi.proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["../proto/csi.proto"], &["../proto"])
        .expect("compiling csi/proto/csi.proto (is protoc installed? apt-get install protobuf-compiler)");
}
