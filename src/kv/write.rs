//! A dataset to a file in the format of the file's extension, or as JSON Lines to any writer,
//! streamed so 10,000,000 pairs never become one giant string. `load` reads every output back.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::dataset::Dataset;
use super::load::Format;
use super::uuid_v4::format_uuid;
use super::write_json_string;

/// Write buffer: big enough that the system call cost disappears (about 16,000 pairs a write).
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Writes `dataset` as `.json` (one object), `.jsonl`/`.ndjson` or `.csv` (RFC 4180, `key,value`
/// header, LF line ends), chosen by the extension of `path`.
pub fn write(dataset: &Dataset, path: &Path) -> io::Result<()> {
    let format = Format::of(path).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: unknown dataset format: the file name must end in .json, .jsonl, .ndjson or .csv",
                path.display()
            ),
        )
    })?;
    let mut out = BufWriter::with_capacity(WRITE_BUFFER_BYTES, File::create(path)?);
    write_format(dataset, format, &mut out)?;
    out.into_inner()
        .map_err(io::IntoInnerError::into_error)?
        .sync_all()
}

/// Writes `dataset` as JSON Lines, `{"key":"<uuid>","value":"<value>"}` a line, to `out` (one
/// `write_all` a pair: give it a buffered writer). `tally sample` writes stdout with it.
pub fn write_jsonl(dataset: &Dataset, out: &mut impl Write) -> io::Result<()> {
    write_format(dataset, Format::JsonLines, out)
}

fn write_format(dataset: &Dataset, format: Format, out: &mut impl Write) -> io::Result<()> {
    // One pair is formatted into `line`, then copied into the writer's buffer.
    let mut line = Vec::with_capacity(256);
    match format {
        Format::Json => out.write_all(b"{")?,
        Format::Csv => out.write_all(b"key,value\n")?,
        Format::JsonLines => {}
    }
    for (i, (key, value)) in dataset.iter().enumerate() {
        line.clear();
        let key = format_uuid(key);
        match format {
            Format::Json => {
                line.extend_from_slice(if i == 0 { b"\n  \"" } else { b",\n  \"" });
                line.extend_from_slice(&key);
                line.extend_from_slice(b"\": ");
                write_json_string(&mut line, value);
            }
            Format::JsonLines => {
                line.extend_from_slice(b"{\"key\":\"");
                line.extend_from_slice(&key);
                line.extend_from_slice(b"\",\"value\":");
                write_json_string(&mut line, value);
                line.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                line.extend_from_slice(&key);
                line.push(b',');
                write_csv_field(&mut line, value);
                line.push(b'\n');
            }
        }
        out.write_all(&line)?;
    }
    if format == Format::Json {
        out.write_all(if dataset.is_empty() { b"}\n" } else { b"\n}\n" })?;
    }
    Ok(())
}

/// A field quoted only when it must be (RFC 4180 section 2, rules 6 and 7).
fn write_csv_field(out: &mut Vec<u8>, value: &str) {
    if !value
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\n' | b'\r'))
    {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    out.push(b'"');
    for (i, part) in value.split('"').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"\"\"");
        }
        out.extend_from_slice(part.as_bytes());
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::dataset::DatasetBuilder;
    use crate::kv::test_files::TestDir;
    use crate::kv::{load, sample};

    fn contents(dataset: &Dataset) -> Vec<(u128, String)> {
        dataset.iter().map(|(k, v)| (k, v.to_owned())).collect()
    }

    #[test]
    fn every_format_round_trips_awkward_values() {
        let mut builder = DatasetBuilder::new();
        let awkward = [
            "plain words",
            "comma, separated",
            "say \"hi\"",
            "line\nbreak and\r\ncrlf",
            "",
            "back\\slash \u{1} tab\t 😀 中文",
            "\"",
            ",",
            " leading and trailing ",
        ];
        let keys = sample(awkward.len(), 5);
        for ((key, _), value) in keys.iter().zip(awkward) {
            builder.push(key, value).expect("small");
        }
        let dataset = builder.finish().expect("distinct");
        let dir = TestDir::new();
        for name in ["d.json", "d.jsonl", "d.ndjson", "d.csv"] {
            let path = dir.path(name);
            write(&dataset, &path).expect("write");
            let loaded = load(&path).expect(name);
            assert_eq!(contents(&loaded), contents(&dataset), "{name}");
        }
    }

    #[test]
    fn sample_round_trips_and_empty_dataset_too() {
        let dir = TestDir::new();
        for dataset in [sample(3_000, 11), sample(0, 11)] {
            for name in ["d.json", "d.jsonl", "d.csv"] {
                let path = dir.path(name);
                write(&dataset, &path).expect("write");
                assert_eq!(
                    contents(&load(&path).expect(name)),
                    contents(&dataset),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn json_lines_go_to_any_writer_one_compact_object_a_line() {
        let dataset = sample(3, 1);
        let mut out = Vec::new();
        write_jsonl(&dataset, &mut out).expect("to memory");
        let text = String::from_utf8(out).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        let (key, value) = dataset.iter().next().expect("non-empty");
        let key = String::from_utf8(format_uuid(key).to_vec()).expect("ASCII");
        assert_eq!(
            lines[0],
            format!("{{\"key\":\"{key}\",\"value\":\"{value}\"}}")
        );
        let dir = TestDir::new();
        let path = dir.file("stdout.jsonl", &text);
        assert_eq!(contents(&load(&path).expect("loads")), contents(&dataset));
    }

    #[test]
    fn unknown_extension_is_refused() {
        let dir = TestDir::new();
        let err = write(&sample(1, 1), &dir.path("d.xml")).expect_err("unknown");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
