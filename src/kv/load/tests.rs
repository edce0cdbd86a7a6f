//! The loader's behaviour through [`load`], one test per behaviour: each format read, and
//! every failure naming the file, its position and its reason.

use super::*;
use crate::kv::test_files::TestDir;

const K1: &str = "8a35eb59-62b3-481c-8875-1f248df4c952";
const K2: &str = "0f6c4d4e-2b55-4d0b-9a43-64d6e0a5e3b1";
const V1_NOT_V4: &str = "c232ab00-9414-11ec-b3c8-9f6bdeced846";

fn pairs(dataset: &Dataset) -> Vec<(String, String)> {
    dataset
        .iter()
        .map(|(k, v)| (key_text(k), v.to_owned()))
        .collect()
}

fn load_text(name: &str, contents: &str) -> Result<Vec<(String, String)>, String> {
    let dir = TestDir::new();
    load(&dir.file(name, contents))
        .map(|d| pairs(&d))
        .map_err(|e| e.to_string())
}

fn error(name: &str, contents: &str) -> String {
    load_text(name, contents).expect_err("must fail")
}

fn expected() -> Vec<(String, String)> {
    vec![
        (K1.to_owned(), "lunmtp ftxemjfob pmo hwoya".to_owned()),
        (K2.to_owned(), "a, \"b\"\nc 😀".to_owned()),
    ]
}

#[test]
fn a_file_of_many_read_slices_is_read_whole() {
    let dir = TestDir::new();
    let contents: Vec<u8> = (0..READ_SLICE_BYTES * 5 / 2 + 7)
        .map(|i| (i % 251) as u8)
        .collect();
    let path = dir.file("big.bin", &contents);
    assert_eq!(read_in_slices(&path).expect("read"), contents);
    let empty = dir.file("empty.bin", b"");
    assert!(read_in_slices(&empty).expect("read").is_empty());
}

#[test]
fn json_object_loads_in_file_order() {
    let text = format!(
        "\u{feff}{{\"{K1}\": \"lunmtp ftxemjfob pmo hwoya\",\n \"{}\" : \"a, \\\"b\\\"\\nc \\ud83d\\ude00\"}}\n",
        K2.to_uppercase()
    );
    assert_eq!(load_text("d.json", &text), Ok(expected()));
    assert_eq!(load_text("empty.json", " {} "), Ok(vec![]));
}

#[test]
fn json_lines_load_ignoring_blank_lines_and_extra_fields() {
    let text = format!(
        "{{\"key\": \"{K1}\", \"value\": \"lunmtp ftxemjfob pmo hwoya\"}}\n\n   \r\n\
         {{\"value\": \"a, \\\"b\\\"\\nc 😀\", \"n\": [1, {{\"x\": null}}], \"key\": \"{K2}\"}}\r\n"
    );
    assert_eq!(load_text("d.jsonl", &text), Ok(expected()));
    assert_eq!(load_text("d.ndjson", &text), Ok(expected()));
}

#[test]
fn csv_loads_quoted_values() {
    let text =
        format!("key,value\r\n{K1},lunmtp ftxemjfob pmo hwoya\r\n{K2},\"a, \"\"b\"\"\nc 😀\"\r\n");
    assert_eq!(load_text("d.csv", &text), Ok(expected()));
    assert_eq!(load_text("header-only.csv", "key,value"), Ok(vec![]));
}

#[test]
fn missing_file_names_the_file() {
    let dir = TestDir::new();
    let message = load(&dir.path("absent.json"))
        .expect_err("missing")
        .to_string();
    assert!(message.contains("absent.json: cannot read"), "{message}");
    assert!(message.contains("No such file"), "{message}");
}

#[test]
fn unknown_extension_is_an_error() {
    let message = error("data.txt", "{}");
    assert!(
        message.contains("data.txt: unknown dataset format"),
        "{message}"
    );
}

#[test]
fn invalid_utf8_reports_its_position() {
    let dir = TestDir::new();
    let path = dir.file("bad.json", b"{\n  \"ab\xff");
    let message = load(&path).expect_err("not UTF-8").to_string();
    assert!(
        message
            .ends_with("bad.json: line 2, column 6 (byte offset 7): the file is not valid UTF-8"),
        "{message}"
    );
}

#[test]
fn bad_json_reports_line_column_and_byte() {
    let message = error("d.json", &format!("{{\"{K1}\": \"v\",\n \"{K2}\" \"v\"}}"));
    assert!(
        message.ends_with(
            "d.json: line 2, column 41 (byte offset 86): bad JSON: expected ':' after the key"
        ),
        "{message}"
    );
    let message = error("d.json", "[]");
    assert!(
        message.contains("line 1, column 1 (byte offset 0): bad JSON: expected '{'"),
        "{message}"
    );
    let message = error("d.json", &format!("{{\"{K1}\": \"v\",}}"));
    assert!(
        message.contains("column 46 (byte offset 45): bad JSON: expected a string"),
        "{message}"
    );
    let message = error("d.json", &format!("{{\"{K1}\": \"v\"}} x"));
    assert!(
        message.contains("bad JSON: unexpected data after the object"),
        "{message}"
    );
    let message = error("d.json", &format!("{{\"{K1}\": \"v"));
    assert!(
        message.contains("bad JSON: unterminated string"),
        "{message}"
    );
}

#[test]
fn key_that_is_not_uuid_v4_is_reported_with_its_position() {
    let message = error(
        "d.json",
        &format!("{{\"{K1}\": \"v\",\n\"{V1_NOT_V4}\": \"w\"}}"),
    );
    assert!(
        message.ends_with(&format!(
            "d.json: line 2, column 1 (byte offset 46): key \"{V1_NOT_V4}\" is not a UUID version 4"
        )),
        "{message}"
    );
    let message = error(
        "d.jsonl",
        &format!("{{\"key\":\"{K1}\",\"value\":\"v\"}}\n{{\"key\":\"nope\",\"value\":\"v\"}}"),
    );
    assert!(
        message.ends_with("d.jsonl: line 2: key \"nope\" is not a UUID version 4"),
        "{message}"
    );
    let message = error("d.csv", &format!("key,value\n{K1},v\n{V1_NOT_V4},w\n"));
    assert!(
        message.ends_with(
            "line 3: key \"c232ab00-9414-11ec-b3c8-9f6bdeced846\" is not a UUID version 4"
        ),
        "{message}"
    );
}

#[test]
fn duplicate_key_reports_both_positions() {
    // Upper and lower case are the same key.
    let message = error(
        "d.json",
        &format!(
            "{{\"{K1}\": \"a\",\n\"{K2}\": \"b\",\n\"{}\": \"c\"}}",
            K1.to_uppercase()
        ),
    );
    assert!(
        message.ends_with(&format!(
            "d.json: line 3, column 1 (byte offset 91): duplicate key {K1}, first seen at line 1, column 2 (byte offset 1)"
        )),
        "{message}"
    );
    let message = error(
        "d.jsonl",
        &format!("{{\"key\":\"{K1}\",\"value\":\"a\"}}\n\n{{\"key\":\"{K1}\",\"value\":\"b\"}}\n"),
    );
    assert!(
        message.ends_with(&format!(
            "d.jsonl: line 3: duplicate key {K1}, first seen at line 1"
        )),
        "{message}"
    );
    let message = error("d.csv", &format!("key,value\n{K1},\"a\nb\"\n{K1},c\n"));
    assert!(
        message.ends_with(&format!(
            "d.csv: line 4: duplicate key {K1}, first seen at line 2"
        )),
        "{message}"
    );
}

#[test]
fn value_that_is_not_a_string_is_reported() {
    let message = error("d.json", &format!("{{\n\"{K1}\": 42}}"));
    assert!(
        message.ends_with(&format!(
            "d.json: line 2, column 41 (byte offset 42): the value of key \"{K1}\" is not a string"
        )),
        "{message}"
    );
    let message = error("d.jsonl", &format!("\n{{\"key\":\"{K1}\",\"value\":null}}"));
    assert!(
        message.ends_with(&format!(
            "d.jsonl: line 2: the value of key \"{K1}\" is not a string"
        )),
        "{message}"
    );
}

#[test]
fn json_lines_record_errors_name_the_line() {
    let message = error("d.jsonl", &format!("{{\"key\":\"{K1}\"}}"));
    assert!(
        message.ends_with("d.jsonl: line 1: bad JSON: the object has no \"value\" field"),
        "{message}"
    );
    let message = error("d.jsonl", "{\"value\":\"v\"}");
    assert!(
        message.ends_with("bad JSON: the object has no \"key\" field"),
        "{message}"
    );
    let message = error("d.jsonl", "\n{\"key\": 5, \"value\":\"v\"}");
    assert!(
        message.ends_with(
            "d.jsonl: line 2, column 9 (byte offset 9): bad JSON: \"key\" is not a string"
        ),
        "{message}"
    );
    let message = error(
        "d.jsonl",
        &format!("{{\"key\":\"{K1}\",\"value\":\"v\"}} {{}}"),
    );
    assert!(
        message.contains("bad JSON: unexpected data after the object"),
        "{message}"
    );
    let message = error("d.jsonl", "[1]");
    assert!(
        message.contains("line 1, column 1 (byte offset 0): bad JSON: expected '{'"),
        "{message}"
    );
}

#[test]
fn csv_errors_name_the_line() {
    let message = error("d.csv", "id,text\n");
    assert!(
        message.ends_with("d.csv: line 1: bad CSV: the first line must be the header `key,value`"),
        "{message}"
    );
    let message = error("d.csv", "");
    assert!(
        message.ends_with(
            "d.csv: line 1: bad CSV: the file is empty: expected the header `key,value`"
        ),
        "{message}"
    );
    let message = error("d.csv", &format!("key,value\n{K1},a,b\n"));
    assert!(
        message.ends_with("d.csv: line 2: bad CSV: expected 2 fields (key,value), found 3"),
        "{message}"
    );
    let message = error("d.csv", &format!("key,value\n{K1}\n"));
    assert!(
        message.ends_with("line 2: bad CSV: expected 2 fields (key,value), found 1"),
        "{message}"
    );
    let message = error(
        "d.csv",
        &format!("key,value\n{K1},\"never closed\n\n{K2},v\n"),
    );
    assert!(
        message.ends_with("line 2: bad CSV: a quoted field is never closed"),
        "{message}"
    );
    let message = error("d.csv", &format!("key,value\n{K1},5\" tall\n{K2},v\n"));
    assert!(
        message.ends_with("line 2: bad CSV: a quote inside an unquoted field (quote the whole field and double the quote)"),
        "{message}"
    );
}

#[test]
fn csv_skips_a_byte_order_mark_and_blank_lines_and_counts_them() {
    let text = format!("\u{feff}key,value\r\n\r\n{K1},a\n\n\n{V1_NOT_V4},b\n");
    let message = error("d.csv", &text);
    assert!(
        message.ends_with(&format!(
            "d.csv: line 6: key \"{V1_NOT_V4}\" is not a UUID version 4"
        )),
        "{message}"
    );
    let text = format!("\u{feff}key,value\n\n{K1},a\n");
    assert_eq!(
        load_text("d.csv", &text),
        Ok(vec![(K1.to_owned(), "a".to_owned())])
    );
}
