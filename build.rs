//! Compiles proto/ with protox (pure Rust, no system protoc) and tonic-prost-build, keeps
//! the encoded descriptor set for gRPC server reflection, and generates serde
//! implementations (pbjson: the proto3 JSON mapping, proto field names) for `ctl --output json`.

use std::{env, fs, path::PathBuf};

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/quotad/v1/quotad.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = fds.encode_to_vec();
    fs::write(out_dir.join("quotad_descriptor.bin"), &descriptor)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor)?
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".quotad.v1"])?;
    // Messages are decoded from one slice (src/pb_codec.rs), not through tonic's buffer.
    tonic_prost_build::configure()
        .codec_path("crate::pb_codec::Codec")
        .compile_fds(fds)?;
    Ok(())
}
