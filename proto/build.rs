//! Compiles the contract with protox (a pure-Rust protobuf compiler), so
//! that no `protoc` has to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "sluice/mesh/v1alpha1/mesh.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["."])?;
    // Snapshots go to many proxies: `Bytes` makes each send a reference count,
    // not a copy.
    tonic_prost_build::configure()
        .bytes(".sluice.mesh.v1alpha1.Snapshot.config_json")
        .compile_fds(descriptors)?;
    Ok(())
}
