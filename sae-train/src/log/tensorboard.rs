//! TensorBoard event-file writer and reader for scalar summaries.
//!
//! Protobufs (`Event`, `Summary`, `Summary.Value`) are encoded by hand and framed as TFRecords
//! (length, masked CRC-32C of the length, data, masked CRC-32C of the data), which is what
//! `tensorboard --logdir` and `wandb sync --sync-tensorboard` read.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use crc::{CRC_32_ISCSI, Crc};

/// CRC-32C (Castagnoli), the checksum TFRecord framing uses.
const CASTAGNOLI: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// Protobuf wire type of varints (`int64`).
const WIRE_VARINT: u8 = 0;
/// Protobuf wire type of 8-byte little-endian values (`double`).
const WIRE_FIXED64: u8 = 1;
/// Protobuf wire type of length-delimited values (`string`, messages).
const WIRE_LEN: u8 = 2;
/// Protobuf wire type of 4-byte little-endian values (`float`).
const WIRE_FIXED32: u8 = 5;

/// `SessionLog.SessionStatus.START`.
const SESSION_START: u64 = 1;

/// Writes scalar summaries to a TensorBoard event file, flushing after every event.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// Creates `dir` and a new `events.out.tfevents.<unix seconds>.<hostname>` file in it,
    /// starting with the `brain.Event:2` version event. A numeric suffix avoids clobbering.
    pub fn create(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        let base = format!("events.out.tfevents.{secs}.{}", hostname());
        let mut suffix = 0u32;
        let (file, path) = loop {
            let name = if suffix == 0 {
                base.clone()
            } else {
                format!("{base}.{suffix}")
            };
            let path = dir.join(name);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => break (file, path),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => suffix += 1,
                Err(e) => return Err(e),
            }
        };
        let mut writer = Self {
            out: BufWriter::new(file),
            path,
        };
        let mut event = event_header(wall_time(), 0);
        put_bytes(&mut event, 3, b"brain.Event:2");
        writer.write_record(&event)?;
        Ok(writer)
    }

    /// Path of the event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs one scalar `value` under `tag` at `step`, stamped with the current wall time.
    pub fn add_scalar(&mut self, tag: &str, step: i64, value: f32) -> io::Result<()> {
        self.add_scalars(step, &[(tag, value)])
    }

    /// Logs several `(tag, value)` scalars at `step` as one event; an empty slice writes nothing.
    pub fn add_scalars(&mut self, step: i64, values: &[(&str, f32)]) -> io::Result<()> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, value) in values {
            let mut v = Vec::new();
            put_bytes(&mut v, 1, tag.as_bytes());
            put_key(&mut v, 2, WIRE_FIXED32);
            v.extend_from_slice(&value.to_le_bytes());
            put_bytes(&mut summary, 1, &v);
        }
        let mut event = event_header(wall_time(), step);
        put_bytes(&mut event, 5, &summary);
        self.write_record(&event)
    }

    /// Marks a (re)start at `step`: a `SessionLog` START event, on which TensorBoard drops what
    /// earlier event files logged at `step` and after (the steps a resumed run does again).
    pub fn add_session_start(&mut self, step: i64) -> io::Result<()> {
        let mut session_log = Vec::new();
        put_key(&mut session_log, 1, WIRE_VARINT);
        put_varint(&mut session_log, SESSION_START);
        let mut event = event_header(wall_time(), step);
        put_bytes(&mut event, 7, &session_log);
        self.write_record(&event)
    }

    /// Flushes buffered bytes to the file (events are already flushed as they are written).
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Writes `data` as one TFRecord and flushes it, so a killed run keeps what it logged.
    fn write_record(&mut self, data: &[u8]) -> io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        self.out.write_all(&len)?;
        self.out.write_all(&masked_crc(&len).to_le_bytes())?;
        self.out.write_all(data)?;
        self.out.write_all(&masked_crc(data).to_le_bytes())?;
        self.out.flush()
    }
}

/// Reads the scalars of every event file in `dir` (oldest first) as TensorBoard shows them: a
/// START [`EventWriter::add_session_start`] at step `s` drops what came before it at `s` and
/// after.
pub fn read_run(dir: &Path) -> io::Result<Vec<(i64, String, f32)>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("events.out.tfevents."))
        })
        .collect();
    files.sort();
    let mut out: Vec<(i64, String, f32)> = Vec::new();
    for file in files {
        for event in read_events(&file)? {
            match event {
                Event::Start(step) => out.retain(|(s, _, _)| *s < step),
                Event::Scalar(step, tag, value) => out.push((step, tag, value)),
            }
        }
    }
    Ok(out)
}

/// What an event file records that [`read_run`] uses.
enum Event {
    /// A session (re)started at this step.
    Start(i64),
    /// `(step, tag, value)`.
    Scalar(i64, String, f32),
}

/// Reads every scalar in an event file as `(step, tag, value)`, in file order.
/// Fails with `InvalidData` on a CRC mismatch or malformed protobuf, `UnexpectedEof` on truncation.
pub fn read_scalars(path: &Path) -> io::Result<Vec<(i64, String, f32)>> {
    Ok(read_events(path)?
        .into_iter()
        .filter_map(|e| match e {
            Event::Scalar(step, tag, value) => Some((step, tag, value)),
            Event::Start(_) => None,
        })
        .collect())
}

/// Reads the scalar and START events of an event file, in file order.
fn read_events(path: &Path) -> io::Result<Vec<Event>> {
    let mut input = BufReader::new(File::open(path)?);
    let mut events = Vec::new();
    loop {
        let mut len = [0u8; 8];
        let got = read_up_to(&mut input, &mut len)?;
        if got == 0 {
            return Ok(events);
        }
        if got < len.len() {
            return Err(ErrorKind::UnexpectedEof.into());
        }
        check_crc(&mut input, &len, "length")?;
        let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| invalid("record too long"))?;
        let mut data = vec![0u8; n];
        input.read_exact(&mut data)?;
        check_crc(&mut input, &data, "data")?;
        parse_event(&data, &mut events)?;
    }
}

/// CRC-32C of `data`, masked as TFRecord does: rotate right by 15 bits, add `0xa282ead8`.
fn masked_crc(data: &[u8]) -> u32 {
    mask(CASTAGNOLI.checksum(data))
}

/// The TFRecord CRC mask, `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Seconds since the Unix epoch, as TensorBoard's `wall_time`.
fn wall_time() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Host name from `/etc/hostname`, else `$HOSTNAME`, else `localhost`.
fn hostname() -> String {
    let from_file = std::fs::read_to_string("/etc/hostname").ok();
    [from_file, std::env::var("HOSTNAME").ok()]
        .into_iter()
        .flatten()
        .map(|h| h.trim().replace(['/', '\\'], "_"))
        .find(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Encodes the `wall_time` (field 1) and `step` (field 2) fields of an `Event`.
fn event_header(wall_time: f64, step: i64) -> Vec<u8> {
    let mut event = Vec::new();
    put_key(&mut event, 1, WIRE_FIXED64);
    event.extend_from_slice(&wall_time.to_le_bytes());
    put_key(&mut event, 2, WIRE_VARINT);
    // int64 is encoded as the two's-complement u64 (ten bytes when negative).
    put_varint(&mut event, step as u64);
    event
}

/// Appends a base-128 varint.
fn put_varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// Appends a field key (field number and wire type).
fn put_key(buf: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(buf, (u64::from(field) << 3) | u64::from(wire));
}

/// Appends a length-delimited field (a string or an embedded message).
fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(buf, field, WIRE_LEN);
    put_varint(buf, bytes.len() as u64);
    buf.extend_from_slice(bytes);
}

/// Reads into `buf` until it is full or the input ends; returns the bytes read.
fn read_up_to(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match input.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads a stored masked CRC and compares it with the one computed over `data`.
fn check_crc(input: &mut impl Read, data: &[u8], what: &str) -> io::Result<()> {
    let mut stored = [0u8; 4];
    input.read_exact(&mut stored)?;
    if u32::from_le_bytes(stored) != masked_crc(data) {
        return Err(invalid(&format!("{what} CRC mismatch")));
    }
    Ok(())
}

/// An `InvalidData` error with a message.
fn invalid(msg: &str) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.to_string())
}

/// A decoded protobuf field value (8-byte values are skipped: no field read here uses one).
enum Field<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

/// Cursor over an encoded protobuf message.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    /// Reads a varint.
    fn varint(&mut self) -> io::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| invalid("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(invalid("varint too long"))
    }

    /// Takes the next `n` bytes.
    fn take(&mut self, n: usize) -> io::Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(invalid("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// Reads the next `(field number, value)`, or `None` at the end of the message.
    fn next_field(&mut self) -> io::Result<Option<(u64, Field<'a>)>> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = usize::try_from(self.varint()?).map_err(|_| invalid("length"))?;
                Field::Bytes(self.take(n)?)
            }
            5 => Field::Fixed32(self.take(4)?.try_into().map_err(|_| invalid("fixed32"))?),
            _ => return Err(invalid("unsupported wire type")),
        };
        Ok(Some((key >> 3, value)))
    }
}

/// Decodes an `Event`, appending its summary's simple values (and a START) to `out`.
fn parse_event(data: &[u8], out: &mut Vec<Event>) -> io::Result<()> {
    let mut step = 0i64;
    let mut summaries = Vec::new();
    let mut start = false;
    let mut event = Fields { buf: data };
    while let Some((field, value)) = event.next_field()? {
        match (field, value) {
            (2, Field::Varint(v)) => step = v as i64,
            (5, Field::Bytes(b)) => summaries.push(b),
            (7, Field::Bytes(b)) => {
                let mut log = Fields { buf: b };
                while let Some((field, value)) = log.next_field()? {
                    start |= matches!((field, value), (1, Field::Varint(SESSION_START)));
                }
            }
            _ => {}
        }
    }
    if start {
        out.push(Event::Start(step));
    }
    for summary in summaries {
        let mut summary = Fields { buf: summary };
        while let Some((field, value)) = summary.next_field()? {
            if let (1, Field::Bytes(b)) = (field, value)
                && let Some((tag, v)) = parse_value(b)?
            {
                out.push(Event::Scalar(step, tag, v));
            }
        }
    }
    Ok(())
}

/// Decodes a `Summary.Value`, returning its tag and `simple_value` if it has one.
fn parse_value(data: &[u8]) -> io::Result<Option<(String, f32)>> {
    let mut tag = String::new();
    let mut simple = None;
    let mut value = Fields { buf: data };
    while let Some((field, v)) = value.next_field()? {
        match (field, v) {
            (1, Field::Bytes(b)) => {
                tag = String::from_utf8(b.to_vec()).map_err(|_| invalid("tag is not UTF-8"))?;
            }
            (2, Field::Fixed32(b)) => simple = Some(f32::from_le_bytes(b)),
            _ => {}
        }
    }
    Ok(simple.map(|v| (tag, v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, unique to this process and test.
    fn test_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sae-tb-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn crc32c_check_value() {
        // The standard CRC-32C check value (RFC 3720, CRC catalogue).
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn masked_crc_by_hand() {
        // 0xE3069283 >> 15 = 0x0001C60D; (0xE3069283 & 0x7FFF) << 17 = 0x1283 << 17 = 0x25060000;
        // OR = 0x2507C60D; + 0xA282EAD8 = 0xC78AB0E5.
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
        // CRC-32C of no bytes is 0, so its mask is just the added constant.
        assert_eq!(masked_crc(b""), 0xA282_EAD8);
    }

    #[test]
    fn protobuf_encoding_by_hand() {
        // Varint 300 = 0b10_0101100 -> [0xAC, 0x02] (the protobuf encoding guide's example).
        let mut buf = Vec::new();
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0xAC, 0x02]);
        // Value { tag: "a", simple_value: 1.0 }: key 1/LEN = 0x0A, len 1, 'a' = 0x61,
        // key 2/FIXED32 = 0x15, 1.0f32 = 0x3F800000 little-endian.
        let mut v = Vec::new();
        put_bytes(&mut v, 1, b"a");
        put_key(&mut v, 2, WIRE_FIXED32);
        v.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(v, [0x0A, 0x01, 0x61, 0x15, 0x00, 0x00, 0x80, 0x3F]);
        // Step -1 as int64 is ten bytes: nine 0xFF then 0x01.
        let header = event_header(0.0, -1);
        assert_eq!(
            &header[9..],
            [
                0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01
            ]
        );
    }

    #[test]
    fn round_trip() -> io::Result<()> {
        let dir = test_dir("round-trip");
        let mut w = EventWriter::create(&dir)?;
        let name = w.path().file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        w.add_scalar("loss", 0, 2.5)?;
        w.add_scalars(10, &[("loss", 1.25), ("fvu", 0.5), ("l0", 32.0)])?;
        w.add_scalars(20, &[])?;
        w.add_scalar("train/lr", 3_000_000_000, -0.125)?;
        w.flush()?;
        let got = read_scalars(w.path())?;
        let want = vec![
            (0, "loss".to_string(), 2.5),
            (10, "loss".to_string(), 1.25),
            (10, "fvu".to_string(), 0.5),
            (10, "l0".to_string(), 32.0),
            (3_000_000_000, "train/lr".to_string(), -0.125),
        ];
        assert_eq!(got, want);
        // A second writer in the same second gets its own file rather than clobbering the first.
        let w2 = EventWriter::create(&dir)?;
        assert_ne!(w.path(), w2.path());
        assert_eq!(read_scalars(w.path())?.len(), 5);
        std::fs::remove_dir_all(&dir)
    }

    #[test]
    fn corruption_is_detected() -> io::Result<()> {
        let dir = test_dir("corrupt");
        let mut w = EventWriter::create(&dir)?;
        w.add_scalar("loss", 1, 0.75)?;
        let path = w.path().to_path_buf();
        drop(w);
        let good = std::fs::read(&path)?;
        // Flip one byte in the last record's data, then in the first record's length.
        for at in [good.len() - 6, 0] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            std::fs::write(&path, &bad)?;
            let err = read_scalars(&path).expect_err("corruption must be detected");
            assert_eq!(err.kind(), ErrorKind::InvalidData, "byte {at}: {err}");
        }
        // A truncated record is an EOF error, not silently dropped.
        std::fs::write(&path, &good[..good.len() - 2])?;
        let err = read_scalars(&path).expect_err("truncation must be detected");
        assert_eq!(err.kind(), ErrorKind::UnexpectedEof);
        std::fs::remove_dir_all(&dir)
    }
}
