//! `airllama api` end to end on SmolLM2-135M-Instruct (`scripts/fetch-smollm2.sh`), as the root
//! of a 3-node cluster (two `airllama worker`s on loopback):
//!
//! 1. `airllama inference` runs a completion prompt and a chat prompt (the chat template's text
//!    for one user message) at temperature 0 on the same workers; its text is the reference.
//! 2. `airllama api` starts on the workers; `api_support/client.py` drives it with the official
//!    `openai` Python client: models list, health, both endpoints equal to the reference,
//!    streaming, KV-cache reuse, stop strings, seeds, concurrent requests, a full queue, a
//!    disconnect mid-stream, and every kind of bad request with its status code.
//! 3. `api_support/browser.py` opens the chat page in headless Chromium, sends a message and
//!    saves a screenshot (`target/tmp/api_server/chat-page.png`).
//! 4. SIGINT stops the server cleanly; a second server on the same workers, with an API key,
//!    answers 401 without the key and 200 with it, then one worker is killed: the next request gets a 503 naming it and the server exits
//!    with that error.
//!
//! Skipped with one printed line when the GGUF, the venv's `openai` package or Chromium is
//! missing; under CI (`CI` set) a missing Python package or Chromium is a failure instead,
//! since scripts/setup.sh installs them.
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airllama::chat_template::{ChatMessage, ChatRole, ChatTemplate};
use airllama::replay::port_is_listening;
use airllama::tokenizer::Tokenizer;

mod smollm2_support;

const COMPLETION_PROMPT: &str = "The capital of France is";
const COMPLETION_TOKENS: u32 = 24;
const QUESTION: &str = "What is the capital of France?";
const CHAT_TOKENS: u32 = 32;
const SEQ_LEN: u32 = 1024;
const QUEUE: u32 = 4;
const MAX_BODY: u64 = 1 << 20;

/// A child process killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until `port` listens; panics if `child` exits first (its log says why).
fn wait_listening(child: &mut Child, port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !port_is_listening(port) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited with {status} before listening on {port}:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{what} does not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts an `airllama worker` on a free port (blocking sockets: the test machine may have
/// two cores for three nodes).
fn worker(out: &Path, index: usize) -> (Process, u16) {
    let port = free_port();
    let log = out.join(format!("worker{index}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_airllama"))
        .args(["worker", "--host", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .args(["--nthreads", "1", "--net-turbo", "0"])
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .expect("spawn airllama worker");
    wait_listening(&mut child, port, "airllama worker", &log);
    (Process(child), port)
}

/// The root flags the reference runs and the server share.
fn root_args(model: &Path, tokenizer: &Path, workers: &[String]) -> Vec<String> {
    let mut args = vec![
        "--model".to_string(),
        model.display().to_string(),
        "--tokenizer".into(),
        tokenizer.display().to_string(),
        "--buffer-float-type".into(),
        "q80".into(),
        "--nthreads".into(),
        "1".into(),
        "--net-turbo".into(),
        "0".into(),
        "--max-seq-len".into(),
        SEQ_LEN.to_string(),
        "--workers".into(),
    ];
    args.extend(workers.iter().cloned());
    args
}

/// The text `airllama inference` prints for `prompt` at temperature 0: the pieces of its
/// `🔶 Pred ... | piece` lines (a piece may hold line breaks; the summary follows a blank line).
fn inference_text(root: &[String], prompt: &str, steps: u32, out: &Path, name: &str) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_airllama"))
        .arg("inference")
        .args(root)
        .args(["--temperature", "0", "--seed", "1", "--steps"])
        .arg(steps.to_string())
        .arg("--prompt")
        .arg(prompt)
        .stderr(Stdio::inherit())
        .output()
        .expect("run airllama inference");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    std::fs::write(out.join(format!("inference-{name}.txt")), &stdout).unwrap();
    assert!(
        output.status.success(),
        "airllama inference failed:\n{stdout}"
    );
    let mut text = String::new();
    for chunk in stdout.split("🔶 ").skip(1) {
        let piece = chunk
            .split_once("kB | ")
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no piece in {chunk:?}"));
        let piece = piece.split("\n\nEvaluation\n").next().unwrap_or(piece);
        text.push_str(piece.strip_suffix('\n').unwrap_or(piece));
    }
    text
}

/// The venv's Python when it has `openai` and `websocket` (`$AIRLLAMA_PYTHON` first).
fn python() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("AIRLLAMA_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/.cache/venv/bin/python3"
        ))),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import openai, websocket"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Prints why a part is skipped; under CI, where scripts/setup.sh installs it, fails instead.
fn missing(what: &str) {
    let line = format!("SKIPPED: {what} (scripts/setup.sh installs it)");
    assert!(std::env::var_os("CI").is_none(), "{line}");
    println!("{line}");
}

/// Starts `airllama api` with the test's flags on a free port, its output in `log`, with
/// `api_key` in `$AIRLLAMA_API_KEY` (none: the variable is removed); returns once it listens
/// (after loading the weights).
fn api_server(root: &[String], log: &Path, api_key: Option<&str>) -> (Process, u16) {
    let port = free_port();
    let file = std::fs::File::create(log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_airllama"));
    match api_key {
        Some(key) => command.env("AIRLLAMA_API_KEY", key),
        None => command.env_remove("AIRLLAMA_API_KEY"),
    };
    let mut server = Process(
        command
            .arg("api")
            .args(root)
            .args(["--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--queue", &QUEUE.to_string(), "--max-body", "1M"])
            .args(["--model-name", "smollm2"])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("spawn airllama api"),
    );
    wait_listening(&mut server.0, port, "airllama api", log);
    (server, port)
}

/// POSTs `body` to `url` with `api_support/request.py` (and the API key, if any); returns
/// "STATUS BODY".
fn post(python: &Path, url: &str, body: &str, api_key: Option<&str>) -> String {
    let output = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api_support/request.py"
        ))
        .args([url, body])
        .args(api_key)
        .output()
        .expect("run request.py");
    assert!(output.status.success(), "request.py failed: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn run_script(python: &Path, script: &str, args: &[&str]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api_support/");
    let status = Command::new(python)
        .arg(format!("{path}{script}"))
        .args(args)
        .status()
        .expect("run python");
    assert!(status.success(), "{script} failed ({status})");
}

#[test]
fn openai_clients_and_the_chat_page_on_a_three_node_cluster() {
    let Some(gguf) = smollm2_support::gguf() else {
        return;
    };
    let Some(python) = python() else {
        missing(
            "api_server: no Python with the openai and websocket-client packages in .cache/venv",
        );
        return;
    };
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api_server");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let (model, tokenizer_path) = smollm2_support::convert(&gguf, "api_server_model");
    let tokenizer = Tokenizer::load(&tokenizer_path).unwrap();

    let workers: Vec<(Process, u16)> = (0..2).map(|i| worker(&out, i + 1)).collect();
    let addresses: Vec<String> = workers
        .iter()
        .map(|(_, port)| format!("127.0.0.1:{port}"))
        .collect();
    let root = root_args(&model, &tokenizer_path, &addresses);

    // The reference texts, from `airllama inference` on the same cluster.
    let completion_tokens = tokenizer
        .encode(COMPLETION_PROMPT, true, true)
        .unwrap()
        .len() as u32;
    let completion_text = inference_text(
        &root,
        COMPLETION_PROMPT,
        completion_tokens - 1 + COMPLETION_TOKENS,
        &out,
        "completion",
    );
    let template = ChatTemplate::for_tokenizer(None, &tokenizer).unwrap();
    let chat_prompt = template
        .render(&[ChatMessage::new(ChatRole::User, QUESTION)], true)
        .text;
    let chat_tokens = tokenizer.encode(&chat_prompt, true, true).unwrap().len() as u32;
    let chat_text = inference_text(
        &root,
        &chat_prompt,
        chat_tokens - 1 + CHAT_TOKENS,
        &out,
        "chat",
    );
    println!("inference: {COMPLETION_PROMPT}{completion_text}");
    println!("inference (chat): {chat_text:?}");

    let server_log = out.join("server.log");
    let (mut server, port) = api_server(&root, &server_log, None);
    let base = format!("http://127.0.0.1:{port}");
    let expected = serde_json::json!({
        "model_id": "smollm2",
        "seq_len": SEQ_LEN,
        "queue": QUEUE,
        "max_body": MAX_BODY,
        "completion": {
            "prompt": COMPLETION_PROMPT,
            "prompt_tokens": completion_tokens,
            "max_tokens": COMPLETION_TOKENS,
            "text": completion_text,
        },
        "chat": {
            "question": QUESTION,
            "prompt_tokens": chat_tokens,
            "max_tokens": CHAT_TOKENS,
            "text": chat_text,
        },
    });
    let expected_path = out.join("expected.json");
    std::fs::write(&expected_path, expected.to_string()).unwrap();
    run_script(
        &python,
        "client.py",
        &[
            &base,
            server_log.to_str().unwrap(),
            expected_path.to_str().unwrap(),
        ],
    );

    let chromium = std::env::var_os("AIRLLAMA_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if chromium.exists() {
        run_script(
            &python,
            "browser.py",
            &[&base, chromium.to_str().unwrap(), out.to_str().unwrap()],
        );
        assert!(out.join("chat-page.png").exists());
    } else {
        missing(&format!(
            "api_server: the chat page test (no Chromium at {})",
            chromium.display()
        ));
    }

    // Ctrl-C: the server sends the workers the stop packet and exits 0.
    let status = Command::new("kill")
        .args(["-INT", &server.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = server.0.wait().unwrap();
    let log = std::fs::read_to_string(&server_log).unwrap();
    assert!(exit.success(), "airllama api exited with {exit}:\n{log}");
    assert!(log.contains("stopping:"), "no stop line in the log:\n{log}");
    println!("server log: {}", server_log.display());

    // A worker that dies: the request meeting it gets a 503 naming a worker (the dead one, or
    // the live one that lost its peer first, whichever the root hears from first), and the
    // server exits with that error instead of answering from a broken cluster.
    let dies_log = out.join("server-worker-dies.log");
    // This one also has an API key: a request without it is a 401.
    let key = Some("test-key-1234");
    let (mut server, port) = api_server(&root, &dies_log, key);
    let url = format!("http://127.0.0.1:{port}/v1/completions");
    let request = r#"{"prompt": "Hello", "max_tokens": 2, "temperature": 0}"#;
    for wrong in [None, Some("test-key-1235")] {
        let answer = post(&python, &url, request, wrong);
        assert!(
            answer.starts_with("401 ") && answer.contains("invalid_api_key"),
            "{answer}"
        );
    }
    let answer = post(&python, &url, request, key);
    assert!(answer.starts_with("200 "), "{answer}");
    let mut workers = workers;
    let (dead, _) = workers.remove(0);
    drop(dead);
    let answer = post(&python, &url, request, key);
    println!("after a worker died: {answer}");
    // (Ephemeral ports all have five digits, so no address is a prefix of another.)
    let names_a_worker = |text: &str| addresses.iter().any(|a| text.contains(a.as_str()));
    assert!(
        answer.starts_with("503 ")
            && answer.contains("the cluster failed")
            && names_a_worker(&answer),
        "{answer}"
    );
    let exit = server.0.wait().unwrap();
    let log = std::fs::read_to_string(&dies_log).unwrap();
    assert!(
        !exit.success(),
        "airllama api went on after its worker died:\n{log}"
    );
    assert!(names_a_worker(&log), "{log}");
    drop(workers);
}
