//! GGUF files (llama.cpp): metadata, tensor directory, and dequantisation of F32, F16, BF16,
//! Q8_0, Q4_0, Q4_1, Q4_K, Q5_K and Q6_K tensors to f32.

use std::collections::HashMap;
use std::path::Path;

use half::{bf16, f16};
use sae_core::mapped::MappedFile;

use crate::error::{ModelError, Result};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Any integer type.
    Int(i64),
    /// `f32` or `f64`.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The integer, if this is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number, if this is one.
    pub fn as_float(&self) -> Option<f64> {
        match self {
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            _ => None,
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A tensor's entry in the directory.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// GGUF dimensions, innermost first (`[in, out]` for a torch `[out, in]` weight).
    pub dims: Vec<usize>,
    /// ggml type id.
    pub ggml_type: u32,
    /// Byte offset from the start of the data section.
    pub offset: usize,
}

/// A GGUF file, mapped: the header is parsed once, a tensor's blocks are read when asked for.
pub struct GgufFile {
    file: MappedFile,
    /// Metadata by key.
    pub metadata: HashMap<String, Value>,
    /// Tensors by name.
    pub tensors: HashMap<String, TensorInfo>,
    data_start: usize,
}

/// Reads little-endian values from a byte buffer, failing cleanly at its end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Reading an array's elements.
    in_array: bool,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.u64()?).ok()?;
        Some(String::from_utf8_lossy(self.take(n)?).into_owned())
    }

    fn value(&mut self, kind: u32) -> Option<Value> {
        let int = |b: &[u8]| -> i64 {
            match b.len() {
                1 => i64::from(b[0]),
                2 => i64::from(u16::from_le_bytes([b[0], b[1]])),
                4 => i64::from(u32::from_le_bytes(b.try_into().expect("4 bytes"))),
                _ => i64::from_le_bytes(b.try_into().expect("8 bytes")),
            }
        };
        Some(match kind {
            0 | 7 => {
                let v = self.take(1)?[0];
                if kind == 7 {
                    Value::Bool(v != 0)
                } else {
                    Value::Int(i64::from(v))
                }
            }
            1 => Value::Int(i64::from(self.take(1)?[0] as i8)),
            2 => Value::Int(int(self.take(2)?)),
            3 => Value::Int(i64::from(i16::from_le_bytes(
                self.take(2)?.try_into().ok()?,
            ))),
            4 => Value::Int(int(self.take(4)?)),
            5 => Value::Int(i64::from(i32::from_le_bytes(
                self.take(4)?.try_into().ok()?,
            ))),
            6 => Value::Float(f64::from(f32::from_le_bytes(
                self.take(4)?.try_into().ok()?,
            ))),
            8 => Value::String(self.string()?),
            9 => {
                let inner = self.u32()?;
                // Arrays of arrays nest at most once in GGUF files; deeper ones are corrupt
                // (and would recurse without bound).
                if inner == 9 && self.in_array {
                    return None;
                }
                let n = usize::try_from(self.u64()?).ok()?;
                // Each element takes at least one byte: a count beyond the bytes left is corrupt.
                if n > self.bytes.len() - self.pos {
                    return None;
                }
                let outer = std::mem::replace(&mut self.in_array, true);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(inner)?);
                }
                self.in_array = outer;
                Value::Array(items)
            }
            10 => Value::Int(int(self.take(8)?)),
            11 => Value::Int(i64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            12 => Value::Float(f64::from_le_bytes(self.take(8)?.try_into().ok()?)),
            _ => return None,
        })
    }
}

/// Block size in values and in bytes of each supported ggml type.
fn block_layout(ggml_type: u32) -> Option<(usize, usize)> {
    Some(match ggml_type {
        0 => (1, 4),      // F32
        1 => (1, 2),      // F16
        30 => (1, 2),     // BF16
        2 => (32, 18),    // Q4_0
        3 => (32, 20),    // Q4_1
        8 => (32, 34),    // Q8_0
        12 => (256, 144), // Q4_K
        13 => (256, 176), // Q5_K
        14 => (256, 210), // Q6_K
        _ => return None,
    })
}

/// The name llama.cpp gives a ggml type id.
pub fn type_name(ggml_type: u32) -> String {
    let names = [
        "F32", "F16", "Q4_0", "Q4_1", "Q4_2", "Q4_3", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K",
        "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL",
        "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32", "I64", "F64", "IQ1_M", "BF16",
    ];
    names
        .get(ggml_type as usize)
        .map_or_else(|| format!("type {ggml_type}"), |n| n.to_string())
}

impl GgufFile {
    /// Reads and parses a GGUF file; a truncated or corrupt file is an error.
    pub fn open(path: &Path) -> Result<Self> {
        let mapped = MappedFile::open(path)?;
        let bytes = mapped.bytes();
        let corrupt = |what: &str| ModelError::BadGguf {
            file: path.to_path_buf(),
            message: what.to_string(),
        };
        let mut c = Cursor {
            bytes,
            pos: 0,
            in_array: false,
        };
        if c.take(4) != Some(b"GGUF") {
            return Err(corrupt("not a GGUF file (bad magic)"));
        }
        let version = c.u32().ok_or_else(|| corrupt("truncated header"))?;
        if !(2..=3).contains(&version) {
            return Err(corrupt(&format!(
                "GGUF version {version} is not supported (2 or 3)"
            )));
        }
        let n_tensors = c.u64().ok_or_else(|| corrupt("truncated header"))?;
        let n_kv = c.u64().ok_or_else(|| corrupt("truncated header"))?;
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string().ok_or_else(|| corrupt("truncated metadata"))?;
            let kind = c.u32().ok_or_else(|| corrupt("truncated metadata"))?;
            let value = c
                .value(kind)
                .ok_or_else(|| corrupt(&format!("bad or truncated metadata value {key}")))?;
            metadata.insert(key, value);
        }
        let mut tensors = HashMap::new();
        for _ in 0..n_tensors {
            let info = (|| {
                let name = c.string()?;
                let n_dims = c.u32()?;
                let dims = (0..n_dims)
                    .map(|_| c.u64().and_then(|d| usize::try_from(d).ok()))
                    .collect::<Option<Vec<_>>>()?;
                let ggml_type = c.u32()?;
                let offset = usize::try_from(c.u64()?).ok()?;
                Some((
                    name,
                    TensorInfo {
                        dims,
                        ggml_type,
                        offset,
                    },
                ))
            })()
            .ok_or_else(|| corrupt("truncated tensor directory"))?;
            tensors.insert(info.0, info.1);
        }
        let alignment = metadata
            .get("general.alignment")
            .and_then(Value::as_int)
            .map_or(32, |a| a.max(1) as usize);
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let file_len = bytes.len();
        let file = GgufFile {
            file: mapped,
            metadata,
            tensors,
            data_start,
        };
        for (name, info) in &file.tensors {
            if let Some((block, size)) = block_layout(info.ggml_type) {
                let end = info
                    .dims
                    .iter()
                    .try_fold(1usize, |n, &d| n.checked_mul(d))
                    .and_then(|n| (n / block).checked_mul(size))
                    .and_then(|bytes| bytes.checked_add(info.offset))
                    .and_then(|end| end.checked_add(file.data_start));
                if end.is_none_or(|end| end > file_len) {
                    return Err(corrupt(&format!(
                        "tensor {name} runs past the end of the file (truncated?)"
                    )));
                }
            }
        }
        Ok(file)
    }

    /// Metadata value `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    /// The values of tensor `name` as f32, in torch order (GGUF dims reversed).
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingWeight {
                dir: self.file.path().to_path_buf(),
                name: name.to_string(),
            })?;
        let (block, size) = block_layout(info.ggml_type).ok_or_else(|| ModelError::BadGguf {
            file: self.file.path().to_path_buf(),
            message: format!(
                "tensor {name} has quantisation {}, which is not supported",
                type_name(info.ggml_type)
            ),
        })?;
        let n: usize = info.dims.iter().product();
        if !n.is_multiple_of(block) {
            return Err(ModelError::BadGguf {
                file: self.file.path().to_path_buf(),
                message: format!(
                    "tensor {name} has {n} values, not a multiple of its block size {block}"
                ),
            });
        }
        let start = self.data_start + info.offset;
        let values = self.file.read(start..start + n / block * size, |data| {
            dequantize(info.ggml_type, data, n)
        })?;
        Ok((info.dims.iter().rev().copied().collect(), values))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `n` values of ggml type `ggml_type` (a type [`block_layout`] knows).
fn dequantize(ggml_type: u32, data: &[u8], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    match ggml_type {
        0 => out.extend(
            data.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        1 => out.extend(data.chunks_exact(2).map(|b| f16_at(b, 0))),
        30 => out.extend(
            data.chunks_exact(2)
                .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        ),
        2 => {
            for b in data.chunks_exact(18) {
                let d = f16_at(b, 0);
                let qs = &b[2..18];
                out.extend(qs.iter().map(|q| ((q & 0xF) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        3 => {
            for b in data.chunks_exact(20) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..20];
                out.extend(qs.iter().map(|q| (q & 0xF) as f32 * d + m));
                out.extend(qs.iter().map(|q| (q >> 4) as f32 * d + m));
            }
        }
        8 => {
            for b in data.chunks_exact(34) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
            }
        }
        12 => {
            for b in data.chunks_exact(144) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qs) = (&b[4..16], &b[16..144]);
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    out.extend(q.iter().map(|v| d * sc1 * (v & 0xF) as f32 - dmin * m1));
                    out.extend(q.iter().map(|v| d * sc2 * (v >> 4) as f32 - dmin * m2));
                }
            }
        }
        13 => {
            for b in data.chunks_exact(176) {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let (scales, qh, qs) = (&b[4..16], &b[16..48], &b[48..176]);
                for (j, q) in qs.chunks_exact(32).enumerate() {
                    let (sc1, m1) = scale_min_k4(2 * j, scales);
                    let (sc2, m2) = scale_min_k4(2 * j + 1, scales);
                    let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
                    let high = |l: usize, u: u8| if qh[l] & u != 0 { 16.0 } else { 0.0 };
                    out.extend(
                        q.iter()
                            .enumerate()
                            .map(|(l, v)| d * sc1 * ((v & 0xF) as f32 + high(l, u1)) - dmin * m1),
                    );
                    out.extend(
                        q.iter()
                            .enumerate()
                            .map(|(l, v)| d * sc2 * ((v >> 4) as f32 + high(l, u2)) - dmin * m2),
                    );
                }
            }
        }
        14 => {
            for b in data.chunks_exact(210) {
                let (ql, qh, scales) = (&b[0..128], &b[128..192], &b[192..208]);
                let d = f16_at(b, 208);
                for half in 0..2 {
                    let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &scales[8 * half..]);
                    let mut y = [0f32; 128];
                    for l in 0..32 {
                        let is = l / 16;
                        let q = |low: u8, shift: u32| {
                            ((low | (((qh[l] >> shift) & 3) << 4)) as i32 - 32) as f32
                        };
                        let s = |k: usize| sc[is + k] as i8 as f32;
                        y[l] = d * s(0) * q(ql[l] & 0xF, 0);
                        y[l + 32] = d * s(2) * q(ql[l + 32] & 0xF, 2);
                        y[l + 64] = d * s(4) * q(ql[l] >> 4, 4);
                        y[l + 96] = d * s(6) * q(ql[l + 32] >> 4, 6);
                    }
                    out.extend(y);
                }
            }
        }
        _ => unreachable!("block_layout admits only the types above"),
    }
    out
}

/// The 6-bit scale and min of sub-block `j` in a K-quant's packed 12 scale bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    };
    (f32::from(sc), f32::from(m))
}
