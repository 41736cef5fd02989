// Generates the gRPC server and client of the rate-limit service used by the tests (needs protoc, which
// envoy-test/install installs from Debian's package protobuf-compiler).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::compile_protos("proto/rls.proto")?;
    Ok(())
}
