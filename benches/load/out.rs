//! Where the load benches write their results and how their SVG charts begin, shared by
//! `benches/load.rs` and `benches/sustained.rs` so the two charts and output paths agree.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The directory cargo builds into: CARGO_TARGET_DIR, else the one this binary sits in
/// (TARGET/release/deps/NAME-HASH).
pub fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return manifest.join(d);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|d| d.join("CACHEDIR.TAG").exists() || d.ends_with("target"))
        .unwrap_or_else(|| manifest.join("target"))
}

/// Text made safe for an SVG element.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Opens a `w` x `h` chart on a white page with its title and subtitle at `left`.
pub fn svg_open(s: &mut String, w: f64, h: f64, left: f64, title: &str, subtitle: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="28" font-size="16" font-weight="bold">{}</text>"#,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{left}" y="48" fill="#555">{}</text>"##,
        esc(subtitle)
    );
}
