//! Long texts are tokenised in pieces: the same ids as the whole text where the pieces are cut
//! at a space, and memory proportional to the text (this binary counts its allocations).

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use sae_models::Tokenizer;
use sae_models::tokenizer::{PIECE_BYTES, pieces};

/// The system allocator, counting the bytes held now and at most.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let held = HELD.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(held, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Held by every test, so that none allocates while another measures.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn qwen2_tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/qwen2_tiny")
}

/// The `tokenizers` crate's own ids for the whole of `text`, no piecing.
fn whole_ids(tokenizer: &tokenizers::Tokenizer, text: &str, special: bool) -> Vec<i64> {
    let encoding = tokenizer.encode(text, special).unwrap();
    encoding.get_ids().iter().map(|&i| i64::from(i)).collect()
}

/// At least `bytes` of prose with punctuation, digits, contractions, runs of spaces and
/// newlines, accents, CJK and emoji.
fn prose(bytes: usize) -> String {
    let lines = [
        "Shall I compare thee to a summer's day? Thou art more lovely and more temperate:",
        "  Rough winds do shake the darling buds of May,\n\nAnd summer's lease hath all too short a date;",
        "Café déjà vu — 東京 2024: 3.14159 ≈ π, \"quoted\" (parenthesised) [bracketed] {braced}.",
        "tabs\tand\ttabs,   three spaces, trailing space \nemoji 🦀🦀 and CRLF\r\n",
        "they'll we've I'm you'd IT'S — 1234567890 0xDEADBEEF https://example.org/a?b=c&d=e",
    ];
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        text.push_str(lines[i % lines.len()]);
        text.push_str(&format!(" line {i}.\n"));
        i += 1;
    }
    text
}

#[test]
fn long_texts_get_the_whole_texts_ids_when_cut_at_spaces() {
    let _serial = serial();
    let tokenizer = Tokenizer::load(&qwen2_tiny()).unwrap();
    let raw = tokenizers::Tokenizer::from_file(qwen2_tiny().join("tokenizer.json")).unwrap();
    let short = prose(PIECE_BYTES / 2);
    assert_eq!(pieces(&short), [short.as_str()]);
    assert_eq!(
        tokenizer.encode(&short, false).unwrap(),
        whole_ids(&raw, &short, false)
    );

    let text = prose(5 * PIECE_BYTES);
    let cut = pieces(&text);
    assert!(cut.len() >= 5, "{} pieces", cut.len());
    assert_eq!(cut.concat(), text);
    for piece in &cut[1..] {
        assert!(piece.starts_with(' ') && piece.len() <= PIECE_BYTES);
    }
    let ids = tokenizer.encode(&text, false).unwrap();
    assert_eq!(ids, whole_ids(&raw, &text, false));
    // Not by chance: the same text cut at other places tokenises differently.
    let halves = text.split_at(text.floor_char_boundary(text.len() / 2 + 7));
    let mut split = whole_ids(&raw, halves.0, false);
    split.extend(whole_ids(&raw, halves.1, false));
    assert_ne!(split, ids);
}

#[test]
fn a_text_without_spaces_is_cut_at_characters_and_tokenised_piece_by_piece() {
    let _serial = serial();
    let tokenizer = Tokenizer::load(&qwen2_tiny()).unwrap();
    let text = "é中a".repeat(PIECE_BYTES / 2);
    let cut = pieces(&text);
    assert_eq!(cut.concat(), text);
    assert!(
        cut.len() > 3
            && cut
                .iter()
                .all(|p| p.len() > PIECE_BYTES - 6 || p.len() < 20)
    );
    let mut ids = Vec::new();
    for piece in &cut {
        ids.extend(tokenizer.encode(piece, false).unwrap());
    }
    assert_eq!(tokenizer.encode(&text, false).unwrap(), ids);
}

#[test]
fn the_post_processors_tokens_wrap_the_whole_text_once() {
    let _serial = serial();
    let path = qwen2_tiny().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let raw = tokenizers::Tokenizer::from_file(&path).unwrap();
    let (bos, eos) = ("<|endoftext|>", "<|im_end|>");
    let special = |token: &str| {
        let id = raw.token_to_id(token).unwrap();
        serde_json::json!({"id": token, "ids": [id], "tokens": [token]})
    };
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": eos, "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos: special(bos), eos: special(eos)},
    });
    let raw: tokenizers::Tokenizer = json.to_string().parse().unwrap();
    let tokenizer = Tokenizer::from_parts(raw.clone(), None, None, None);
    let text = prose(3 * PIECE_BYTES);
    let ids = tokenizer.encode(&text, true).unwrap();
    assert_eq!(ids, whole_ids(&raw, &text, true));
    let (bos, eos) = (raw.token_to_id(bos).unwrap(), raw.token_to_id(eos).unwrap());
    let count = |id: u32| ids.iter().filter(|&&i| i == i64::from(id)).count();
    assert_eq!((count(bos), count(eos)), (1, 1));
    assert_eq!(
        (ids[0], ids[ids.len() - 1]),
        (i64::from(bos), i64::from(eos))
    );
}

/// The most bytes held at once while `f` runs, beyond those held before.
fn peak_of<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = HELD.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed) - before)
}

#[test]
fn memory_is_proportional_to_the_text() {
    let _serial = serial();
    let tokenizer = Tokenizer::load(&qwen2_tiny()).unwrap();
    let raw = tokenizers::Tokenizer::from_file(qwen2_tiny().join("tokenizer.json")).unwrap();
    let text = prose(2 << 20);
    let (ids, peak) = peak_of(|| tokenizer.encode(&text, false).unwrap());
    let (_, whole) = peak_of(|| raw.encode(text.as_str(), false).unwrap());
    let per_byte = |peak: usize| peak as f64 / text.len() as f64;
    let (ours, theirs) = (per_byte(peak), per_byte(whole));
    eprintln!(
        "{} bytes, {} ids: peak {ours:.1}x the text, {theirs:.1}x in one piece",
        text.len(),
        ids.len()
    );
    // Most of it is the ids themselves (8 bytes each, a Vec grown by doubling): this tiny
    // vocabulary makes a token of every 1.6 bytes.
    assert!(
        ours < 20.0 && ours * 4.0 < theirs,
        "peak {ours:.1}x the text, {theirs:.1}x in one piece"
    );
}
