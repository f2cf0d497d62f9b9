// Generates the CSI v1 client and server from csi/proto/csi.proto (needs protoc,
// installed by scripts/install-deps.sh as Debian's protobuf-compiler).
/// Keep in sync with the `redact_debug!` list in src/redact.rs (the build fails if a
/// type lacks Debug, so a forgotten entry cannot go unnoticed).
const SECRET_BEARING: &[&str] = &[
    "CreateVolumeRequest",
    "DeleteVolumeRequest",
    "ControllerPublishVolumeRequest",
    "ControllerUnpublishVolumeRequest",
    "ValidateVolumeCapabilitiesRequest",
    "CreateSnapshotRequest",
    "DeleteSnapshotRequest",
    "ListSnapshotsRequest",
    "ControllerExpandVolumeRequest",
    "NodeStageVolumeRequest",
    "NodePublishVolumeRequest",
    "NodeExpandVolumeRequest",
    "ControllerModifyVolumeRequest",
    "CreateVolumeGroupSnapshotRequest",
    "DeleteVolumeGroupSnapshotRequest",
    "GetVolumeGroupSnapshotRequest",
];

fn main() {
    println!("cargo:rerun-if-changed=../proto/csi.proto");
    tonic_prost_build::configure()
        // Requests carrying secrets get a hand-written Debug that redacts them
        // (src/redact.rs), so `{:?}` of a request can never leak a cephx key.
        .skip_debug(SECRET_BEARING.iter().map(|m| format!(".csi.v1.{m}")))
        .build_server(true)
        .build_client(true)
        .compile_protos(&["../proto/csi.proto"], &["../proto"])
        .expect("compiling csi/proto/csi.proto (is protoc installed? apt-get install protobuf-compiler)");
}
