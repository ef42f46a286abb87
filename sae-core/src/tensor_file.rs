//! Safetensors files on the host: read F32/F16/BF16 (and I64) tensors from a mapped file, write
//! them atomically.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use crate::convert::Conversion;
use crate::error::{Result, SaeError};
use crate::mapped::MappedFile;

/// A float dtype: how floats are stored in a file we write, or what a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDtype {
    /// 32-bit floats (lossless).
    #[default]
    F32,
    /// IEEE half precision.
    F16,
    /// bfloat16.
    BF16,
}

impl StorageDtype {
    /// Bytes per value.
    pub fn size(self) -> usize {
        match self {
            StorageDtype::F32 => 4,
            StorageDtype::F16 | StorageDtype::BF16 => 2,
        }
    }
}

impl std::str::FromStr for StorageDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(StorageDtype::F32),
            "f16" | "float16" => Ok(StorageDtype::F16),
            "bf16" | "bfloat16" => Ok(StorageDtype::BF16),
            other => Err(format!(
                "unknown dtype {other:?} (expected f32, f16 or bf16)"
            )),
        }
    }
}

impl From<StorageDtype> for burn::tensor::DType {
    fn from(dtype: StorageDtype) -> Self {
        match dtype {
            StorageDtype::F32 => burn::tensor::DType::F32,
            StorageDtype::F16 => burn::tensor::DType::F16,
            StorageDtype::BF16 => burn::tensor::DType::BF16,
        }
    }
}

impl TryFrom<burn::tensor::DType> for StorageDtype {
    type Error = String;
    fn try_from(dtype: burn::tensor::DType) -> Result<Self, String> {
        match dtype {
            burn::tensor::DType::F32 => Ok(StorageDtype::F32),
            burn::tensor::DType::F16 => Ok(StorageDtype::F16),
            burn::tensor::DType::BF16 => Ok(StorageDtype::BF16),
            other => Err(format!("models compute in f32, f16 or bf16, not {other:?}")),
        }
    }
}

/// The values of a host tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum HostData {
    /// Floats (whatever the file stored, widened to f32).
    F32(Vec<f32>),
    /// 64-bit integers (indices).
    I64(Vec<i64>),
}

/// A tensor on the host: a shape and its row-major values.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values.
    pub data: HostData,
}

impl HostTensor {
    /// A float tensor.
    pub fn f32(shape: Vec<usize>, values: Vec<f32>) -> Self {
        HostTensor {
            shape,
            data: HostData::F32(values),
        }
    }

    /// An int64 tensor.
    pub fn i64(shape: Vec<usize>, values: Vec<i64>) -> Self {
        HostTensor {
            shape,
            data: HostData::I64(values),
        }
    }

    /// A Burn float tensor's values.
    pub fn from_float<B: Backend, const D: usize>(t: Tensor<B, D>) -> Self {
        let shape = t.dims().to_vec();
        Self::f32(shape, crate::host::to_host(t))
    }

    /// The float values (an int tensor is converted).
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            HostData::F32(v) => v.clone(),
            HostData::I64(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }

    /// The integer values; `None` for a float tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            HostData::I64(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// As a Burn float tensor of rank `D`.
    pub fn to_float<B: Backend, const D: usize>(&self, device: &B::Device) -> Tensor<B, D> {
        Tensor::from_data(TensorData::new(self.to_f32(), self.shape.clone()), device)
    }
}

/// The transpose of a row-major `[rows, cols]` matrix (row-major `[cols, rows]`).
pub fn transpose(values: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; values.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = values[r * cols + c];
        }
    }
    out
}

/// A safetensors file, mapped: its header is parsed once, a tensor's bytes are read when asked
/// for (see [`crate::mapped`]).
pub struct TensorFile {
    file: MappedFile,
    /// Each tensor's dtype, shape and bytes in the file.
    entries: HashMap<String, Entry>,
}

/// Where a tensor lies in its file.
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Range<usize>,
}

impl TensorFile {
    /// Maps the file and validates its header (a truncated or corrupt file is an error here).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let file = MappedFile::open(path)?;
        let (header, metadata) = SafeTensors::read_metadata(file.bytes()).map_err(|source| {
            SaeError::BadSafetensors {
                file: file.path().to_path_buf(),
                source,
            }
        })?;
        let data_start = 8 + header;
        let entries = metadata
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (start, end) = info.data_offsets;
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    bytes: data_start + start..data_start + end,
                };
                (name, entry)
            })
            .collect();
        Ok(TensorFile { file, entries })
    }

    fn entry(&self, name: &str) -> Result<&Entry> {
        self.entries
            .get(name)
            .ok_or_else(|| SaeError::MissingTensor {
                file: self.path().to_path_buf(),
                name: name.to_string(),
            })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    /// Name, dtype and shape of every tensor, sorted by name.
    pub fn describe(&self) -> Vec<(String, String, Vec<usize>)> {
        let mut out: Vec<_> = self
            .entries
            .iter()
            .map(|(n, e)| (n.clone(), format!("{:?}", e.dtype), e.shape.clone()))
            .collect();
        out.sort();
        out
    }

    /// True if the file has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor `name` (floats widened to f32, integers to i64).
    pub fn get(&self, name: &str) -> Result<HostTensor> {
        let entry = self.entry(name)?;
        let data = self
            .file
            .read(entry.bytes.clone(), |bytes| match entry.dtype {
                Dtype::F32 => Some(HostData::F32(cast::<f32>(bytes).collect())),
                Dtype::F16 => Some(HostData::F32(cast::<f16>(bytes).map(f32::from).collect())),
                Dtype::BF16 => Some(HostData::F32(cast::<bf16>(bytes).map(f32::from).collect())),
                Dtype::I64 => Some(HostData::I64(cast::<i64>(bytes).collect())),
                Dtype::I32 => Some(HostData::I64(cast::<i32>(bytes).map(i64::from).collect())),
                _ => None,
            })?;
        let data = data.ok_or_else(|| self.unsupported(name, entry.dtype, None))?;
        Ok(HostTensor {
            shape: entry.shape.clone(),
            data,
        })
    }

    /// The float tensor `name` as tensor data in `dtype`: a view of the mapped file when it is
    /// stored in `dtype` (see [`MappedFile::shared`]), else read from the file in one pass, a
    /// chunk of rows at a time whose pages are released as it goes (see [`Conversion`]).
    pub fn float_data(&self, name: &str, dtype: StorageDtype) -> Result<TensorData> {
        let (entry, _) = self.float_entry(name, dtype)?;
        let rows = entry.shape.first().copied().unwrap_or(1);
        self.float_rows(name, 0..rows, dtype)
    }

    /// Rows `rows` (along the first dimension) of the float tensor `name`, as tensor data in
    /// `dtype` of shape `[rows.len(), ...]` (a rank's slice of a sharded weight): a view of
    /// the mapped file when it is stored in `dtype`, so only the pages read come into memory,
    /// else converted out of the file in one pass (see [`Conversion`]).
    pub fn float_rows(
        &self,
        name: &str,
        rows: Range<usize>,
        dtype: StorageDtype,
    ) -> Result<TensorData> {
        let (entry, stored) = self.float_entry(name, dtype)?;
        let mut shape = entry.shape.clone();
        let all = shape.first().copied().unwrap_or(1);
        if rows.start > rows.end || rows.end > all {
            return Err(SaeError::ShapeMismatch {
                file: self.path().to_path_buf(),
                name: format!("{name} (rows {}..{})", rows.start, rows.end),
                expected: vec![rows.end],
                got: entry.shape.clone(),
            });
        }
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        let row_bytes = entry.bytes.len() / all.max(1);
        let start = entry.bytes.start + rows.start * row_bytes;
        if stored == dtype {
            let range = start..start + rows.len() * row_bytes;
            if let Some(bytes) = self.file.shared(range, dtype.size())? {
                return Ok(TensorData::from_bytes(bytes, shape, dtype.into()));
            }
        }
        let mut conversion = Conversion::new(stored, &shape, dtype);
        for part in conversion.chunks() {
            let bytes = conversion.byte_range(&part);
            let range = start + bytes.start..start + bytes.end;
            self.file
                .read(range, |bytes| conversion.fill(part, bytes))?;
        }
        Ok(conversion.finish())
    }

    /// The entry of float tensor `name` and the dtype it is stored in (an error for other
    /// dtypes, naming `dtype`, the one asked for).
    fn float_entry(&self, name: &str, dtype: StorageDtype) -> Result<(&Entry, StorageDtype)> {
        let entry = self.entry(name)?;
        let stored = match entry.dtype {
            Dtype::F32 => StorageDtype::F32,
            Dtype::F16 => StorageDtype::F16,
            Dtype::BF16 => StorageDtype::BF16,
            other => return Err(self.unsupported(name, other, Some(dtype))),
        };
        Ok((entry, stored))
    }

    fn unsupported(&self, name: &str, dtype: Dtype, computed: Option<StorageDtype>) -> SaeError {
        SaeError::UnsupportedDtype {
            file: self.path().to_path_buf(),
            name: name.to_string(),
            dtype: format!("{dtype:?}"),
            computed: computed.map(|d| format!("{d:?}").to_lowercase()),
        }
    }

    /// The tensor `name`, which must have `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let got = self.shape(name)?;
        if got != shape {
            return Err(SaeError::ShapeMismatch {
                file: self.path().to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
            });
        }
        self.get(name)
    }

    /// Where the bytes of tensor `name` lie in the file: `(start, end)` offsets.
    pub fn byte_range(&self, name: &str) -> Result<(u64, u64)> {
        let bytes = &self.entry(name)?.bytes;
        Ok((bytes.start as u64, bytes.end as u64))
    }

    /// The shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        self.entry(name).map(|e| e.shape.clone())
    }
}

/// Reads little-endian values of type `T` from unaligned bytes.
fn cast<T: bytemuck::Pod>(bytes: &[u8]) -> impl Iterator<Item = T> + '_ {
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        .map(bytemuck::pod_read_unaligned)
}

/// Writes tensors (floats stored as `dtype`) to `path` atomically, with optional metadata.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, HostTensor)],
    dtype: StorageDtype,
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    // f32 and i64 data are written from the tensors themselves; only a conversion copies.
    let encoded: Vec<_> = tensors
        .iter()
        .map(|(name, t)| {
            let (dt, bytes): (Dtype, Cow<[u8]>) = match (&t.data, dtype) {
                (HostData::I64(v), _) => (Dtype::I64, Cow::Borrowed(bytemuck::cast_slice(v))),
                (HostData::F32(v), StorageDtype::F32) => {
                    (Dtype::F32, Cow::Borrowed(bytemuck::cast_slice(v)))
                }
                (HostData::F32(v), StorageDtype::F16) => {
                    let h: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
                    (Dtype::F16, Cow::Owned(bytemuck::cast_slice(&h).to_vec()))
                }
                (HostData::F32(v), StorageDtype::BF16) => {
                    let h: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
                    (Dtype::BF16, Cow::Owned(bytemuck::cast_slice(&h).to_vec()))
                }
            };
            (name.clone(), dt, t.shape.clone(), bytes)
        })
        .collect();
    let bad = |source| SaeError::BadSafetensors {
        file: path.to_path_buf(),
        source,
    };
    let views = encoded
        .iter()
        .map(|(name, dt, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), bytes)
                .map(|v| (name.as_str(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(bad)?;
    // Streamed to the file: no copy of the whole file in memory.
    let mut failure = None;
    atomically(path, |tmp| {
        safetensors::serialize_to_file(views, metadata, tmp).map_err(|error| match error {
            safetensors::SafeTensorError::IoError(io) => io,
            other => {
                failure = Some(other);
                std::io::Error::other("the tensors cannot be written as safetensors")
            }
        })
    })
    .map_err(|error| failure.map_or(error, bad))
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash or a full disk
/// never leaves a half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomically(path, |tmp| std::fs::write(tmp, bytes))
}

/// Runs `write` on a temporary file beside `path`, then renames it to `path`; on an error the
/// temporary file is removed and `path` is untouched.
fn atomically(path: &Path, write: impl FnOnce(&Path) -> std::io::Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if dir.exists() && !dir.is_dir() {
        let error = std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "it is a file, not a folder",
        );
        return Err(SaeError::io(dir)(error));
    }
    std::fs::create_dir_all(dir).map_err(SaeError::io(dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(SaeError::io(path))
}

/// Reads and parses a JSON file.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(SaeError::io(path))?;
    serde_json::from_str(&text).map_err(|source| SaeError::BadJson {
        file: path.to_path_buf(),
        source,
    })
}

/// Writes a value as pretty JSON, atomically.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values always serialise");
    write_atomic(path, format!("{text}\n").as_bytes())
}
