//! Compiles `proto/link.proto` with protox (pure Rust), so `cargo` alone builds the router.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/link.proto");
    let descriptors = protox::compile(["proto/link.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
