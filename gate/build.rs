//! Compiles `proto/imgate.proto` with protox (pure Rust), so `cargo` alone builds imgate.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/imgate.proto");
    let descriptors = protox::compile(["proto/imgate.proto"], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`: a decoded body shares the frame's buffer.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
