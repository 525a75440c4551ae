//! Container images without a registry: an OCI image layout written by this code into one tar
//! archive, for `ctr images import`.
//!
//! Why: no registry is reachable, and the lab must run Berth as users do, from an image. The
//! images hold Berth's static release binaries and nothing else; the pause image and the test
//! server are subcommands of the same binary (`berth lab pause`, `berth lab echo`), so all three
//! images share one layer, stored once per node.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Where the binaries live inside every lab image.
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The registry-less name of Berth's image in the lab (`imagePullPolicy: Never`).
pub const BERTH_IMAGE: &str = "berth.dev/lab/berth:lab";
/// The pod sandbox ("pause") image the lab's kubelets use: `berth lab pause`.
pub const PAUSE_IMAGE: &str = "berth.dev/lab/pause:lab";
/// The test server image: `berth lab echo` (HTTP, TCP and UDP; reports the peer it saw).
pub const ECHO_IMAGE: &str = "berth.dev/lab/echo:lab";

/// One image of an archive: its full name and its entrypoint.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    /// Full reference, e.g. [`BERTH_IMAGE`]. Why: what pods name in `image:`.
    pub name: String,
    /// The entrypoint; the pod's `args` follow it. Why: pause and echo run a subcommand.
    pub entrypoint: Vec<String>,
}

/// The lab's three images over one layer holding `berth` and `berth-ipam`.
///
/// Why: one place that says what the lab imports into every node.
pub fn lab_images() -> Vec<ImageSpec> {
    let bin = |b: &str| format!("{IMAGE_BIN_DIR}/{b}");
    vec![
        ImageSpec {
            name: BERTH_IMAGE.into(),
            entrypoint: vec![bin("berth")],
        },
        ImageSpec {
            name: PAUSE_IMAGE.into(),
            entrypoint: vec![bin("berth"), "lab".into(), "pause".into()],
        },
        ImageSpec {
            name: ECHO_IMAGE.into(),
            entrypoint: vec![bin("berth"), "lab".into(), "echo".into()],
        },
    ]
}

/// Whether `path` is a statically linked ELF executable (no `PT_INTERP` program header).
///
/// Why: the images hold nothing but the binaries, so a dynamically linked `berth` would not
/// start in them; say so before building an image that cannot run.
pub fn is_static_elf(path: &Path) -> Result<bool> {
    let b = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        bail!("{} is not a 64-bit little-endian ELF file", path.display());
    }
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let o = phoff + i * phentsize;
        if o + 4 > b.len() {
            bail!("{}: program header {i} out of bounds", path.display());
        }
        let p_type = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if p_type == 3 {
            return Ok(false); // PT_INTERP: needs a dynamic loader
        }
    }
    Ok(true)
}

/// A tar archive written into memory (ustar; names up to 100 bytes, which is all we need).
#[derive(Default)]
struct Tar {
    buf: Vec<u8>,
}

impl Tar {
    fn header(&mut self, name: &str, mode: u32, size: u64, kind: u8) -> Result<()> {
        if name.len() > 100 {
            bail!("tar entry name `{name}` longer than 100 bytes");
        }
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let octal = |h: &mut [u8], at: usize, len: usize, v: u64| {
            let s = format!("{v:0width$o}", width = len - 1);
            h[at..at + len - 1].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, u64::from(mode));
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size);
        octal(&mut h, 136, 12, 0);
        h[148..156].copy_from_slice(b"        ");
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.buf.extend_from_slice(&h);
        Ok(())
    }

    fn dir(&mut self, name: &str) -> Result<()> {
        self.header(name, 0o755, 0, b'5')
    }

    fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.header(name, mode, data.len() as u64, b'0')?;
        self.buf.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.buf.extend(std::iter::repeat_n(0u8, pad));
        Ok(())
    }

    fn finish(mut self) -> Vec<u8> {
        self.buf.extend(std::iter::repeat_n(0u8, 1024));
        self.buf
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes an OCI image layout holding `images`, each one layer with `binaries` (copied into
/// [`IMAGE_BIN_DIR`] under their file names), as one tar archive at `out`. Returns the
/// layer's digest.
///
/// Why: `ctr -n k8s.io images import` reads this archive; the `io.containerd.image.name`
/// annotation gives every image its full name, so pods find it with `imagePullPolicy: Never`.
pub fn write_oci_archive(binaries: &[PathBuf], images: &[ImageSpec], out: &Path) -> Result<String> {
    let mut layer = Tar::default();
    layer.dir("usr/")?;
    layer.dir("usr/local/")?;
    layer.dir("usr/local/bin/")?;
    for b in binaries {
        let data = std::fs::read(b).with_context(|| format!("reading {}", b.display()))?;
        let name = b
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{} has no file name", b.display()))?;
        layer.file(&format!("usr/local/bin/{name}"), 0o755, &data)?;
    }
    let layer = layer.finish();
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));

    let mut blobs: Vec<(String, Vec<u8>)> = vec![(layer_digest.clone(), layer.clone())];
    let mut manifests = Vec::new();
    for img in images {
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": img.entrypoint,
                "Env": [format!("PATH={IMAGE_BIN_DIR}")],
                "WorkingDir": "/",
            },
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "berth-lab image writer"}],
        });
        let config = serde_json::to_vec(&config)?;
        let config_digest = format!("sha256:{}", sha256_hex(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": layer_digest,
                "size": layer.len(),
            }],
        });
        let manifest = serde_json::to_vec(&manifest)?;
        let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
        let tag = img
            .name
            .rsplit_once(':')
            .map(|(_, t)| t)
            .unwrap_or("latest");
        manifests.push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": img.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }));
        blobs.push((config_digest, config));
        blobs.push((manifest_digest, manifest));
    }
    let index: Value = json!({"schemaVersion": 2, "manifests": manifests});

    let mut tar = Tar::default();
    tar.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar.file("index.json", 0o644, &serde_json::to_vec(&index)?)?;
    tar.dir("blobs/")?;
    tar.dir("blobs/sha256/")?;
    let mut seen = std::collections::HashSet::new();
    for (digest, data) in &blobs {
        if seen.insert(digest.clone()) {
            let hex = digest.trim_start_matches("sha256:");
            tar.file(&format!("blobs/sha256/{hex}"), 0o644, data)?;
        }
    }
    let tmp = out.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&tar.finish())?;
    f.sync_all()?;
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    Ok(layer_digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads back a ustar archive: (name, data) per regular file.
    fn untar(b: &[u8]) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut o = 0;
        while o + 512 <= b.len() && b[o] != 0 {
            let h = &b[o..o + 512];
            let name = String::from_utf8_lossy(&h[..100])
                .trim_end_matches('\0')
                .to_string();
            let size = u64::from_str_radix(
                String::from_utf8_lossy(&h[124..135]).trim_end_matches('\0'),
                8,
            )
            .unwrap() as usize;
            let sum: u32 = h[..148]
                .iter()
                .chain([b' '; 8].iter())
                .chain(h[156..].iter())
                .map(|&x| u32::from(x))
                .sum();
            let stored = u32::from_str_radix(
                String::from_utf8_lossy(&h[148..154]).trim_end_matches('\0'),
                8,
            )
            .unwrap();
            assert_eq!(sum, stored, "checksum of {name}");
            o += 512;
            if h[156] == b'0' {
                out.push((name, b[o..o + size].to_vec()));
            }
            o += size.div_ceil(512) * 512;
        }
        out
    }

    #[test]
    fn archive_is_a_valid_oci_layout_with_shared_layer() {
        let d = tempfile::tempdir().unwrap();
        let bin = d.path().join("berth");
        std::fs::write(&bin, b"#!fake binary\n").unwrap();
        let out = d.path().join("images.tar");
        let layer = write_oci_archive(&[bin], &lab_images(), &out).unwrap();
        let files = untar(&std::fs::read(&out).unwrap());
        let get = |n: &str| {
            files
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, d)| d.clone())
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        // Every blob is stored under its own digest.
        for (name, data) in &files {
            if let Some(hex) = name.strip_prefix("blobs/sha256/") {
                assert_eq!(sha256_hex(data), hex, "{name}");
            }
        }
        let index: Value = serde_json::from_slice(&get("index.json")).unwrap();
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["annotations"]["io.containerd.image.name"]
                    .as_str()
                    .unwrap()
            })
            .collect();
        assert_eq!(names, [BERTH_IMAGE, PAUSE_IMAGE, ECHO_IMAGE]);
        // One layer blob, three configs, three manifests.
        assert_eq!(
            files
                .iter()
                .filter(|(n, _)| n.starts_with("blobs/"))
                .count(),
            7
        );
        let layer_tar = get(&format!("blobs/sha256/{}", &layer[7..]));
        let inner = untar(&layer_tar);
        assert_eq!(inner.len(), 1);
        assert_eq!(inner[0].0, "usr/local/bin/berth");
        assert_eq!(inner[0].1, b"#!fake binary\n");
    }

    #[test]
    fn static_elf_is_told_from_dynamic() {
        // The test binary itself is dynamically linked (cargo's default on -linux-gnu).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me).unwrap());
        let d = tempfile::tempdir().unwrap();
        let junk = d.path().join("junk");
        std::fs::write(&junk, b"not an elf").unwrap();
        assert!(is_static_elf(&junk).is_err());
    }
}
