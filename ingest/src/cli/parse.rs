//! `sluice parse`: syslog messages on stdin → one JSON object per message on stdout.
//!
//! Every message yields exactly one line: one that cannot be parsed becomes an object carrying
//! the error kind and the raw text (in the `sluice` schema: `"kind":"error"`, `"error"`,
//! `"raw"`). Empty lines are not messages. The exit status is non-zero only for an I/O error
//! on stdin or stdout; a closed stdout (e.g. `| head`) ends the run quietly with success,
//! since the reader chose to stop.

use std::io::{self, Read, Write};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::event::{Received, Timestamp};
use crate::frame::{FrameEvent, FrameLimits, Framing, OversizePolicy, StreamFramer};
use crate::map::{self, Schema};
use crate::parse::{LocalZone, ParseOptions, Parser};

#[derive(Debug, clap::Args)]
pub struct ParseArgs {
    /// Output schema.
    #[arg(long, value_enum, default_value = "sluice")]
    pub schema: Schema,
    /// How messages are separated on stdin: `lf` (one per line) or `octet` (RFC 6587 octet
    /// counting, `LEN SP MSG`); `auto` decides from the first byte.
    #[arg(long, value_enum, default_value = "lf")]
    pub framing: Framing,
    /// Longest message in bytes; longer ones are cut to this length (and then usually fail to
    /// parse, which is reported on their output line).
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_message_bytes: usize,
    /// Deepest JSON nesting accepted in a body.
    #[arg(long, default_value_t = ParseOptions::default().json_max_depth)]
    pub json_max_depth: usize,
    /// Largest JSON body accepted, in bytes.
    #[arg(long, default_value_t = ParseOptions::default().json_max_bytes)]
    pub json_max_bytes: usize,
    /// Source name recorded in each event.
    #[arg(long, default_value = "stdin")]
    pub source: String,
    /// Zone of timestamps written without one (RFC 3164): an IANA name such as
    /// `Europe/Paris`, `UTC`, `local` (this host's zone), or an offset such as `+02:00` (the
    /// `timezone` config key).
    #[arg(long, default_value = "UTC", value_parser = zone_name, allow_hyphen_values = true)]
    pub timezone: String,
}

/// Checks a `--timezone` value up front, so a bad one is a usage error.
fn zone_name(text: &str) -> Result<String, String> {
    LocalZone::parse(text).map(|_| text.to_owned())
}

/// Output is flushed whenever this much is buffered.
const FLUSH_BYTES: usize = 256 * 1024;
const READ_BYTES: usize = 1 << 20;

struct Emitter<'s, W: Write> {
    parser: Parser,
    schema: Schema,
    source: &'s str,
    buf: Vec<u8>,
    out: W,
}

impl<W: Write> Emitter<'_, W> {
    fn message(&mut self, raw: &[u8]) -> io::Result<()> {
        let raw = match raw.last() {
            Some(b'\r') => &raw[..raw.len() - 1],
            _ => raw,
        };
        if raw.is_empty() {
            return Ok(());
        }
        let received = Received {
            source: self.source,
            peer: None,
            received_at: Timestamp::now(),
        };
        let event = self.parser.parse(received, raw);
        map::write(self.schema, &event, &mut self.buf);
        let storage = event.into_storage();
        self.parser.recycle(storage);
        self.buf.push(b'\n');
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf)?;
        self.buf.clear();
        Ok(())
    }
}

pub fn run(args: ParseArgs) -> anyhow::Result<ExitCode> {
    let stdin = io::stdin().lock();
    let stdout = io::stdout().lock();
    match process(&args, stdin, stdout) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e).context("sluice parse"),
    }
}

/// The whole command minus process plumbing: reads `input` to its end, writes to `output`.
pub fn process<R: Read, W: Write>(args: &ParseArgs, mut input: R, output: W) -> io::Result<()> {
    let options = ParseOptions {
        json_max_depth: args.json_max_depth,
        json_max_bytes: args.json_max_bytes,
        zone: LocalZone::parse(&args.timezone)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
    };
    let mut emitter = Emitter {
        parser: Parser::new(options),
        schema: args.schema,
        source: &args.source,
        buf: Vec::with_capacity(FLUSH_BYTES + 64 * 1024),
        out: output,
    };
    let max = args.max_message_bytes.max(1);
    let mut chunk = vec![0u8; READ_BYTES];

    if args.framing != Framing::Lf {
        let mut framer = StreamFramer::new(
            args.framing,
            FrameLimits {
                max_frame_bytes: max,
                oversize: OversizePolicy::Truncate,
            },
        );
        let mut failure: Option<io::Error> = None;
        loop {
            let n = read_some(&mut input, &mut chunk)?;
            if n == 0 {
                break;
            }
            framer.feed(&chunk[..n], &mut |ev| {
                on_frame(&mut emitter, &mut failure, ev)
            });
            if failure.is_some() {
                break;
            }
        }
        if failure.is_none() {
            framer.finish(&mut |ev| on_frame(&mut emitter, &mut failure, ev));
        }
        if let Some(e) = failure {
            return Err(e);
        }
        emitter.flush()?;
        return emitter.out.flush();
    }

    // One message per line. `carry` holds an unterminated line between reads; a line longer
    // than `max` is cut there and the rest of it skipped.
    let mut carry: Vec<u8> = Vec::new();
    let mut skipping = false;
    loop {
        let n = read_some(&mut input, &mut chunk)?;
        if n == 0 {
            break;
        }
        let mut data = &chunk[..n];
        while let Some(pos) = memchr::memchr(b'\n', data) {
            let line = &data[..pos];
            data = &data[pos + 1..];
            if skipping {
                skipping = false;
                continue;
            }
            if carry.is_empty() {
                emitter.message(&line[..line.len().min(max)])?;
            } else {
                let room = max.saturating_sub(carry.len());
                carry.extend_from_slice(&line[..line.len().min(room)]);
                emitter.message(&carry)?;
                carry.clear();
            }
        }
        if !skipping && !data.is_empty() {
            let room = max.saturating_sub(carry.len());
            carry.extend_from_slice(&data[..data.len().min(room)]);
            if carry.len() >= max {
                emitter.message(&carry)?;
                carry.clear();
                skipping = true;
            }
        }
    }
    if !carry.is_empty() {
        emitter.message(&carry)?;
    }
    emitter.flush()?;
    emitter.out.flush()
}

/// Handles one framer event; remembers the first output error and ignores frames after it.
fn on_frame<W: Write>(
    emitter: &mut Emitter<'_, W>,
    failure: &mut Option<io::Error>,
    ev: FrameEvent<'_>,
) {
    if failure.is_some() {
        return;
    }
    let result = match ev {
        FrameEvent::Frame { bytes, .. } => emitter.message(bytes),
        FrameEvent::Rejected { len } => {
            eprintln!("sluice parse: dropped an oversize frame of {len} bytes");
            Ok(())
        }
        FrameEvent::Desync { skipped } => {
            eprintln!("sluice parse: framing error, skipped {skipped} bytes to the next line");
            Ok(())
        }
    };
    if let Err(e) = result {
        *failure = Some(e);
    }
}

fn read_some<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match input.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(schema: Schema, max: usize) -> ParseArgs {
        ParseArgs {
            schema,
            framing: Framing::Lf,
            max_message_bytes: max,
            json_max_depth: 128,
            json_max_bytes: 256 * 1024,
            source: "test".into(),
            timezone: "UTC".into(),
        }
    }

    /// Feeds `input` in reads of `step` bytes to exercise line reassembly.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.data.len().min(self.step).min(buf.len());
            buf[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn run_lines(input: &str, max: usize, step: usize) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        process(
            &args(Schema::Sluice, max),
            Trickle {
                data: input.as_bytes(),
                step,
            },
            &mut out,
        )
        .unwrap();
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn one_object_per_line_whatever_the_read_size() {
        let input = "{\"aiaScore\":1}\r\n\nplain text\n{\"broken\":\n{\"pbid\":1,\"model\":{}}";
        for step in [1, 2, 7, 1 << 20] {
            let v = run_lines(input, 1024, step);
            let kinds: Vec<&str> = v.iter().map(|e| e["kind"].as_str().unwrap()).collect();
            assert_eq!(
                kinds,
                [
                    "darktrace_ai_analyst",
                    "text",
                    "error",
                    "darktrace_model_breach"
                ],
                "step {step}"
            );
            assert_eq!(v[2]["raw"], "{\"broken\":");
            assert_eq!(v[0]["source"], "test");
        }
    }

    #[test]
    fn long_lines_are_cut_not_dropped() {
        let long = format!("{{\"a\":\"{}\"}}", "x".repeat(100));
        let input = format!("{long}\nshort\n");
        for step in [3, 1 << 20] {
            let v = run_lines(&input, 20, step);
            assert_eq!(v.len(), 2, "step {step}");
            assert_eq!(v[0]["kind"], "error");
            assert_eq!(v[0]["raw"].as_str().unwrap().len(), 20);
            assert_eq!(v[1]["text"], "short");
        }
    }

    struct ClosedPipe;
    impl Write for ClosedPipe {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_output_is_an_error_not_a_panic() {
        let err = process(&args(Schema::Raw, 1024), &b"a\nb\n"[..], ClosedPipe).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    }
}
