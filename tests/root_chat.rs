//! `airllama chat` end to end: stdin line by line, the KV cache kept across turns, a clean exit
//! at end of input or of the context.
#[macro_use]
mod golden_support;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

mod smollm2_support;

fn golden(variant: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/golden")).join(variant)
}

fn chat(args: &[&str], model: &PathBuf, tokenizer: &PathBuf, input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_airllama"))
        .arg("chat")
        .arg("--model")
        .arg(model)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn airllama chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn end_of_input_after_the_system_prompt_exits_cleanly() {
    golden_or_skip!();
    let dir = golden("llama-q40");
    let out = chat(
        &["--buffer-float-type", "q80", "--chat-template", "llama3"],
        &dir.join("model.m"),
        &dir.join("tokenizer.t"),
        "",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("System prompt"));
    assert!(!stdout.contains("Assistant"));
}

#[test]
fn a_turn_that_fills_the_context_ends_the_chat() {
    golden_or_skip!();
    // Random weights never pick the eos token here: the answer runs to the end of the
    // 128-position context, and the chat ends there even though more input follows.
    let dir = golden("llama-q40");
    let out = chat(
        &[
            "--buffer-float-type",
            "q80",
            "--chat-template",
            "llama3",
            "--max-seq-len",
            "128",
            "--temperature",
            "0",
        ],
        &dir.join("model.m"),
        &dir.join("tokenizer.t"),
        "\nhi\nsecond question\n",
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.matches("🤖 Assistant").count(), 1, "{stdout}");
    assert!(stdout.contains("(end of context)"), "{stdout}");
}

#[test]
fn an_unknown_template_is_named() {
    golden_or_skip!();
    let dir = golden("llama-q40");
    let out = chat(
        &["--buffer-float-type", "q80", "--chat-template", "nope"],
        &dir.join("model.m"),
        &dir.join("tokenizer.t"),
        "",
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn smollm2_keeps_the_conversation_across_turns() {
    let Some(gguf) = smollm2_support::gguf() else {
        return;
    };
    let (model, tokenizer) = smollm2_support::convert(&gguf, "root_chat");
    let flags = [
        "--buffer-float-type",
        "q80",
        "--temperature",
        "0",
        "--max-seq-len",
        "512",
    ];
    let question = "Tell me more about that city.";
    let out = chat(
        &flags,
        &model,
        &tokenizer,
        &format!("\nWhat is the capital of France? Answer in one sentence.\n{question}\n"),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answers: Vec<&str> = stdout.split("🤖 Assistant").skip(1).collect();
    assert_eq!(answers.len(), 2, "two turns answered");
    assert!(answers[0].contains("Paris"), "first answer: {}", answers[0]);
    // "that city" only means Paris with the first turn still in the KV cache: asked alone, the
    // same question (temperature 0) is answered about somewhere else.
    assert!(
        answers[1].contains("Paris"),
        "second answer: {}",
        answers[1]
    );
    let alone = chat(&flags, &model, &tokenizer, &format!("\n{question}\n"));
    let alone = String::from_utf8_lossy(&alone.stdout);
    let alone = alone.split("🤖 Assistant").nth(1).expect("an answer");
    assert!(!alone.contains("Paris"), "asked alone: {alone}");
}
