//! From a reference to the EROFS images `krypton run` attaches, converting
//! each layer once (by its blob digest) under the store lock.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter};
use std::path::PathBuf;

use super::staging::decoder;
use super::{ImageConfig, Store, StoreError, io_err};
use crate::erofs::{self, Limits};
use crate::manifest::layer_compression;

/// An image ready to run.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The index key it was found under (`name:tag`, `name@digest`).
    pub reference: String,
    /// Manifest digest.
    pub manifest_digest: String,
    /// Run settings from the config.
    pub config: ImageConfig,
    /// EROFS images, bottom → top.
    pub layers: Vec<PathBuf>,
}

impl Store {
    /// Looks the reference up in the local index (docker-style parsing:
    /// `busybox` = docker.io/library/busybox:latest; also a full or unique
    /// short manifest digest or image id) and returns the layers as EROFS
    /// images, converting (once per layer digest, under the store lock)
    /// any that are missing.
    pub fn resolve(&self, reference: &str) -> Result<ResolvedImage, StoreError> {
        let _g = self.lock()?;
        let (key, md) = self.lookup(reference)?;
        let m = self.manifest(&md)?;
        let cfg = self.config(&m)?;
        let mut layers = Vec::with_capacity(m.layers.len());
        for l in &m.layers {
            let d = l.digest("layer digest")?;
            let out = self.layer_path(&d);
            if !out.is_file() {
                self.convert_layer(&d, layer_compression(&l.media_type)?)?;
            }
            layers.push(out);
        }
        Ok(ResolvedImage {
            reference: key,
            manifest_digest: md.to_string(),
            config: cfg.image_config(),
            layers,
        })
    }

    /// How many layers `resolve` would convert now (0 once converted).
    pub fn unconverted_layers(&self, reference: &str) -> Result<usize, StoreError> {
        let (_, md) = self.lookup(reference)?;
        let m = self.manifest(&md)?;
        let mut n = 0;
        for l in &m.layers {
            if !self.layer_path(&l.digest("layer digest")?).is_file() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn convert_layer(
        &self,
        d: &crate::digest::Digest,
        c: crate::manifest::Compression,
    ) -> Result<(), StoreError> {
        let src = self.blob_path(d);
        let f = File::open(&src).map_err(|_| StoreError::MissingBlob(d.clone()))?;
        let tar = decoder(BufReader::with_capacity(1 << 20, f), c).map_err(|source| {
            StoreError::Layer {
                digest: d.clone(),
                source,
            }
        })?;
        let (tmp, out) = self.temp_file()?;
        let mut w = BufWriter::with_capacity(1 << 20, out);
        let res = erofs::convert(tar, &mut w, &Limits::default())
            .map_err(|source| StoreError::Convert {
                digest: d.clone(),
                source,
            })
            .and_then(|_| {
                w.into_inner()
                    .map_err(|e| io_err("writing", &tmp)(e.into_error()))
            })
            .and_then(|f| f.sync_all().map_err(io_err("writing", &tmp)));
        let dst = self.layer_path(d);
        let res = res.and_then(|()| fs::rename(&tmp, &dst).map_err(io_err("storing", &dst)));
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        log::info!("converted layer {d}");
        res
    }
}
