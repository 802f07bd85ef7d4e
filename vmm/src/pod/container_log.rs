//! Container log files, `logs/<container>/<restartCount>.log`: the one
//! place that writes and reads their format, the CRI log format kubelet and
//! containerd use. One record per line:
//!
//! ```text
//! 2026-12-07T21:00:00.123456789Z stdout F hello
//! 2026-12-07T21:00:00.200000000Z stderr P no newline yet
//! ```
//!
//! # Design
//! The supervisor appends each output chunk the agent sends ([`encode`]),
//! stamped with the time the agent read it. A chunk becomes one `F` (full)
//! record per newline it holds, the newline itself dropped, and one `P`
//! (partial) record for a rest without one. So the contents, each `F`
//! followed by a newline, are the bytes the container wrote, in the order
//! the agent read them: `unipod logs` without flags prints exactly those.
//!
//! A *line* is what `--tail` counts, `--since` filters and `--timestamps`
//! stamps: the records up to and including the next `F`, whatever their
//! stream, i.e. a line of the bytes as written. Its time is its first
//! record's (when its first byte was read). [`select_start`] applies
//! `--since` and then `--tail` as kubectl does; [`Render`] prints records,
//! with the stamp in kubectl's form (nine fraction digits).
//!
//! # Limitations
//! - The CRI path (containerd-shim-unipod-v2) does not use these files: the
//!   shim hands the raw output to containerd's FIFOs, and containerd writes
//!   the kubelet's CRI log itself.
//! - `--since` keeps everything from the first line newer than the cutoff,
//!   so a wall-clock step back inside the log keeps the lines after it.
//! - The stamps come from the guest's wall clock, which the host sets when
//!   the VM boots; a file that holds no records (written raw by an older
//!   unipod) is printed as it is, with no stamps, and `--since` drops it.

use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use guest_agent::civil::civil_from_days;
use guest_agent::protocol::Stream;

use crate::pod::status::days_from_civil;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Now on the host's wall clock, in nanoseconds since the Unix epoch: the
/// stamp of output from an agent that sent none.
pub fn now_nanos() -> u64 {
    unix_nanos(SystemTime::now())
}

/// `time` in nanoseconds since the Unix epoch (0 before it, saturating).
pub fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The cutoff of `--since DURATION`: `since` before now, in nanoseconds
/// since the Unix epoch.
pub fn since_cutoff(since: Duration) -> u64 {
    let since = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
    now_nanos().saturating_sub(since)
}

/// Formats nanoseconds since the Unix epoch as RFC 3339 in UTC with nine
/// fraction digits, as `kubectl logs --timestamps` shows them
/// (`2026-12-07T21:00:00.123456789Z`).
pub fn format_time(unix_nanos: u64) -> String {
    let secs = unix_nanos / NANOS_PER_SEC;
    let nanos = unix_nanos % NANOS_PER_SEC;
    let days = i64::try_from(secs / 86_400).expect("u64 seconds / 86400 fits in i64");
    let (y, m, d) = civil_from_days(days);
    let day_secs = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// Parses an RFC 3339 time in UTC (`Z`) with up to nine fraction digits,
/// as [`format_time`] and Go's `RFC3339Nano` write it; nanoseconds since
/// the Unix epoch, or `None` for anything else.
pub fn parse_time(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || b.last() != Some(&b'Z') {
        return None;
    }
    let digits = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (y, m, d) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hh, mm, ss) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if y < 1970 || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    if hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Bytes 0..19 are ASCII (checked above) and the last is `Z`.
    let nanos = match &text[19..text.len() - 1] {
        "" => 0,
        frac => {
            let frac = frac.strip_prefix('.')?;
            let scale = 10i64.pow(9 - u32::try_from(frac.len()).ok().filter(|n| *n <= 9)?);
            digits(20..20 + frac.len())? * scale
        }
    };
    let secs = days_from_civil(y, m, d) * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1_000_000_000 + nanos).ok()
}

/// Appends to `out` the records of one output chunk read at `time`: an
/// `F` record per newline in `data`, a `P` record for a rest without one.
pub fn encode(out: &mut Vec<u8>, time: u64, stream: Stream, data: &[u8]) {
    let stamp = format_time(time);
    let stream = match stream {
        Stream::Stdout => "stdout",
        Stream::Stderr => "stderr",
    };
    for piece in data.split_inclusive(|b| *b == b'\n') {
        let (content, tag) = match piece.strip_suffix(b"\n") {
            Some(line) => (line, 'F'),
            None => (piece, 'P'),
        };
        out.extend_from_slice(format!("{stamp} {stream} {tag} ").as_bytes());
        out.extend_from_slice(content);
        out.push(b'\n');
    }
}

/// One record of a log file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// When the agent read it, in nanoseconds since the Unix epoch; `None`
    /// for a line that is not a record.
    pub time: Option<u64>,
    /// It ends a line (`F`): a newline followed `content`.
    pub full: bool,
    /// The bytes the container wrote, without the newline.
    pub content: &'a [u8],
}

impl<'a> Record<'a> {
    /// Parses one record, `line` without its newline. A line that is not a
    /// record (a log an older unipod wrote raw) is a full record with no
    /// time: the whole line is its content.
    pub fn parse(line: &'a [u8]) -> Self {
        Self::parse_cri(line).unwrap_or(Record {
            time: None,
            full: true,
            content: line,
        })
    }

    fn parse_cri(line: &'a [u8]) -> Option<Self> {
        let mut fields = line.splitn(4, |b| *b == b' ');
        let time = parse_time(std::str::from_utf8(fields.next()?).ok()?)?;
        if !matches!(fields.next()?, b"stdout" | b"stderr") {
            return None;
        }
        let full = match fields.next()? {
            b"F" => true,
            b"P" => false,
            _ => return None,
        };
        Some(Record {
            time: Some(time),
            full,
            content: fields.next().unwrap_or_default(),
        })
    }
}

/// The complete records of `text` (each ends in a newline; a record being
/// written is left for later), each with the offset just past it.
pub fn records(text: &[u8]) -> impl Iterator<Item = (usize, Record<'_>)> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let len = text[at..].iter().position(|b| *b == b'\n')?;
        let record = Record::parse(&text[at..at + len]);
        at += len + 1;
        Some((at, record))
    })
}

/// Where `unipod logs` starts printing `text`: at the first line stamped
/// at or after `since` (nanoseconds since the Unix epoch), then at the last
/// `tail` of those lines, as kubectl applies `--since` before `--tail`. An
/// unended last line counts. With no line selected, the end of the
/// complete records, where `-f` goes on from.
pub fn select_start(text: &[u8], since: Option<u64>, tail: Option<u64>) -> usize {
    // (offset, time) of each line's first record.
    let mut lines: Vec<(usize, Option<u64>)> = Vec::new();
    let mut line_start = true;
    let mut end = 0;
    for (next, record) in records(text) {
        if line_start {
            lines.push((end, record.time));
        }
        line_start = record.full;
        end = next;
    }
    let mut first = match since {
        Some(cutoff) => lines
            .iter()
            .position(|(_, time)| time.is_some_and(|t| t >= cutoff))
            .unwrap_or(lines.len()),
        None => 0,
    };
    if let Some(n) = tail {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        first = first.max(lines.len().saturating_sub(n));
    }
    lines.get(first).map_or(end, |(offset, _)| *offset)
}

/// Prints records as `unipod logs` shows them: the content, a newline
/// after each full record and, with `timestamps`, each line's stamp and a
/// space before it. Keeps its place in the line across calls.
#[derive(Debug)]
pub struct Render {
    timestamps: bool,
    line_start: bool,
}

impl Render {
    /// A renderer at the start of a line.
    pub fn new(timestamps: bool) -> Self {
        Render {
            timestamps,
            line_start: true,
        }
    }

    /// Prints the complete records of `text`; returns the bytes they take,
    /// where the next call goes on.
    pub fn write(&mut self, text: &[u8], out: &mut dyn Write) -> io::Result<usize> {
        let mut used = 0;
        for (next, record) in records(text) {
            if self.line_start && self.timestamps {
                if let Some(time) = record.time {
                    write!(out, "{} ", format_time(time))?;
                }
            }
            out.write_all(record.content)?;
            if record.full {
                out.write_all(b"\n")?;
            }
            self.line_start = record.full;
            used = next;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_796_677_200_123_456_789; // 2026-12-07T21:00:00.123456789Z

    fn log(chunks: &[(u64, Stream, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (time, stream, data) in chunks {
            encode(&mut out, *time, *stream, data);
        }
        out
    }

    fn render(text: &[u8], timestamps: bool) -> String {
        let mut out = Vec::new();
        let used = Render::new(timestamps).write(text, &mut out).unwrap();
        assert_eq!(used, text.len(), "every record printed");
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn times_format_with_nine_digits_and_parse_back() {
        assert_eq!(format_time(T0), "2026-12-07T21:00:00.123456789Z");
        assert_eq!(format_time(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(
            format_time(951_782_400 * NANOS_PER_SEC + 5),
            "2000-02-29T00:00:00.000000005Z"
        );
        for t in [
            0,
            T0,
            951_782_400 * NANOS_PER_SEC + 5,
            4_102_444_799 * NANOS_PER_SEC,
        ] {
            assert_eq!(parse_time(&format_time(t)), Some(t), "{t}");
        }
        // Go's RFC3339Nano trims the fraction.
        assert_eq!(parse_time("2026-12-07T21:00:00.1234Z"), Some(T0 - 56_789));
        assert_eq!(parse_time("2026-12-07T21:00:00Z"), Some(T0 - 123_456_789));
        for bad in [
            "",
            "2026-12-07T21:00:00",
            "2026-12-07T21:00:00.Z",
            "2026-12-07T21:00:00.1234567891Z",
            "2026-12-07T21:00:00+01:00",
            "2026-13-07T21:00:00Z",
            "2026-12-07T24:00:00Z",
            "2026-12-07T21:00:0xZ",
            "2026-12-07 21:00:00Z",
            "1969-12-31T23:59:59Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_chunk_becomes_full_records_and_a_partial_rest() {
        let text = log(&[
            (T0, Stream::Stdout, b"one\ntwo\nthr"),
            (T0 + 1, Stream::Stderr, b"\n"),
            (T0 + 2, Stream::Stdout, b""),
        ]);
        assert_eq!(
            String::from_utf8(text.clone()).unwrap(),
            "2026-12-07T21:00:00.123456789Z stdout F one\n\
             2026-12-07T21:00:00.123456789Z stdout F two\n\
             2026-12-07T21:00:00.123456789Z stdout P thr\n\
             2026-12-07T21:00:00.123456790Z stderr F \n"
        );
        let parsed: Vec<Record> = records(&text).map(|(_, r)| r).collect();
        assert_eq!(
            parsed[2],
            Record {
                time: Some(T0),
                full: false,
                content: b"thr"
            }
        );
        assert_eq!(parsed[3].content, b"");
        assert!(parsed[3].full);
    }

    #[test]
    fn rendering_without_timestamps_gives_back_the_bytes_written() {
        let written: &[&[u8]] = &[b"a", b"b\nc\n", b"\n\nd e  f", b"\r\n", b"\xff tail"];
        let chunks: Vec<(u64, Stream, &[u8])> = written
            .iter()
            .enumerate()
            .map(|(i, d)| (T0 + i as u64, Stream::Stdout, *d))
            .collect();
        let mut out = Vec::new();
        Render::new(false).write(&log(&chunks), &mut out).unwrap();
        assert_eq!(out, written.concat());
    }

    #[test]
    fn timestamps_stamp_each_line_with_its_first_piece() {
        let text = log(&[
            (T0, Stream::Stdout, b"he"),
            (T0 + 1_000, Stream::Stdout, b"llo\nbye\n"),
        ]);
        assert_eq!(
            render(&text, true),
            "2026-12-07T21:00:00.123456789Z hello\n2026-12-07T21:00:00.123457789Z bye\n"
        );
        // Across calls (-f): the rest of a line gets no second stamp.
        let mut r = Render::new(true);
        let mut out = Vec::new();
        let first = log(&[(T0, Stream::Stdout, b"he")]);
        assert_eq!(r.write(&first, &mut out).unwrap(), first.len());
        r.write(&log(&[(T0 + 5, Stream::Stdout, b"y\n")]), &mut out)
            .unwrap();
        assert_eq!(out, b"2026-12-07T21:00:00.123456789Z hey\n");
    }

    #[test]
    fn a_record_being_written_waits_and_raw_lines_pass_through() {
        let mut text = log(&[(T0, Stream::Stdout, b"one\n")]);
        let whole = text.len();
        text.extend_from_slice(b"2026-12-07T21:00:01.0Z stdout F tw");
        let mut out = Vec::new();
        assert_eq!(Render::new(false).write(&text, &mut out).unwrap(), whole);
        assert_eq!(out, b"one\n");
        // A log an older unipod wrote raw.
        assert_eq!(render(b"plain old\nlog\n", true), "plain old\nlog\n");
    }

    #[test]
    fn since_then_tail_select_whole_lines() {
        let text = log(&[
            (T0, Stream::Stdout, b"one\n"),
            (T0 + 10, Stream::Stdout, b"tw"),
            (T0 + 20, Stream::Stderr, b"o\n"),
            (T0 + 30, Stream::Stdout, b"three\nfour"),
        ]);
        let from = |since, tail| render(&text[select_start(&text, since, tail)..], false);
        assert_eq!(from(None, None), "one\ntwo\nthree\nfour");
        assert_eq!(from(None, Some(1)), "four");
        assert_eq!(from(None, Some(3)), "two\nthree\nfour");
        assert_eq!(from(None, Some(9)), "one\ntwo\nthree\nfour");
        assert_eq!(from(None, Some(0)), "");
        // A line's time is its first piece's.
        assert_eq!(from(Some(T0 + 10), None), "two\nthree\nfour");
        assert_eq!(from(Some(T0 + 11), None), "three\nfour");
        // --since first, then --tail of what is left.
        assert_eq!(from(Some(T0 + 11), Some(9)), "three\nfour");
        assert_eq!(from(Some(T0 + 1), Some(2)), "three\nfour");
        assert_eq!(from(Some(T0 + 31), Some(2)), "");
        assert_eq!(select_start(&text, Some(T0 + 31), None), text.len());
        assert_eq!(select_start(b"", None, Some(3)), 0);
        // Raw lines have no time: --since drops them, --tail counts them.
        assert_eq!(select_start(b"a\nb\n", Some(0), None), 4);
        assert_eq!(select_start(b"a\nb\n", None, Some(1)), 2);
    }
}
