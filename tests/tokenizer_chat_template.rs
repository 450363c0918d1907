//! Chat templates against dllama's `ChatTemplateGenerator` (tokenizer.cpp).
//!
//! The expected strings were printed by a small C++ program linking dllama's `tokenizer.cpp`,
//! calling `ChatTemplateGenerator(type, nullptr, "<EOS>").generate(items, appendGenerationPrompt)`
//! for the conversations of [`conversation`].
#[macro_use]
mod golden_support;

use std::path::PathBuf;

use airllama::chat_template::{
    ChatMessage, ChatRole, ChatTemplate, ChatTemplateError, ChatTemplateKind,
};
use airllama::tokenizer::Tokenizer;

mod tokenizer_support;

fn conversation(name: &str) -> (Vec<ChatMessage>, bool) {
    use ChatRole::*;
    let m = ChatMessage::new;
    match name {
        "user" => (vec![m(User, "Hello!")], true),
        "sys_user" => (vec![m(System, "Be brief."), m(User, "Hi")], true),
        "conv" => (
            vec![
                m(System, "S"),
                m(User, "U1"),
                m(Assistant, "A1"),
                m(User, "U2"),
            ],
            true,
        ),
        "conv_nogen" => (vec![m(User, "U1"), m(Assistant, "A1")], false),
        _ => unreachable!("unknown conversation {name}"),
    }
}

/// dllama's output: (kind, conversation, rendered text, public prompt).
const DLLAMA: &[(ChatTemplateKind, &str, &str, Option<&str>)] = &[
    (
        ChatTemplateKind::Llama2,
        "user",
        "[INST] Hello! [/INST]<EOS>",
        None,
    ),
    (
        ChatTemplateKind::Llama2,
        "sys_user",
        "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]<EOS>",
        None,
    ),
    (
        ChatTemplateKind::Llama2,
        "conv",
        "[INST] <<SYS>>\nS\n<</SYS>>\n\nU1 [/INST]<EOS>A1<EOS>[INST] U2 [/INST]<EOS>",
        None,
    ),
    (
        ChatTemplateKind::Llama2,
        "conv_nogen",
        "[INST] U1 [/INST]<EOS>A1<EOS>",
        None,
    ),
    (
        ChatTemplateKind::Llama3,
        "user",
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<EOS><|start_header_id|>assistant<|end_header_id|>\n\n",
        None,
    ),
    (
        ChatTemplateKind::Llama3,
        "sys_user",
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<EOS><|start_header_id|>user<|end_header_id|>\n\nHi<EOS><|start_header_id|>assistant<|end_header_id|>\n\n",
        None,
    ),
    (
        ChatTemplateKind::Llama3,
        "conv",
        "<|start_header_id|>system<|end_header_id|>\n\nS<EOS><|start_header_id|>user<|end_header_id|>\n\nU1<EOS><|start_header_id|>assistant<|end_header_id|>\n\nA1<EOS><|start_header_id|>user<|end_header_id|>\n\nU2<EOS><|start_header_id|>assistant<|end_header_id|>\n\n",
        None,
    ),
    (
        ChatTemplateKind::Llama3,
        "conv_nogen",
        "<|start_header_id|>user<|end_header_id|>\n\nU1<EOS><|start_header_id|>assistant<|end_header_id|>\n\nA1<EOS>",
        None,
    ),
    (
        ChatTemplateKind::DeepSeek3,
        "user",
        "<｜User｜>Hello!<｜Assistant｜><think>\n",
        Some("<think>\n"),
    ),
    (
        ChatTemplateKind::DeepSeek3,
        "sys_user",
        "Be brief.<｜User｜>Hi<｜Assistant｜><think>\n",
        Some("<think>\n"),
    ),
    (
        ChatTemplateKind::DeepSeek3,
        "conv",
        "S<｜User｜>U1<｜Assistant｜>A1<｜User｜>U2<｜Assistant｜><think>\n",
        Some("<think>\n"),
    ),
    (
        ChatTemplateKind::DeepSeek3,
        "conv_nogen",
        "<｜User｜>U1<｜Assistant｜>A1",
        None,
    ),
    (
        ChatTemplateKind::ChatMl,
        "user",
        "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
        None,
    ),
    (
        ChatTemplateKind::ChatMl,
        "sys_user",
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        None,
    ),
    (
        ChatTemplateKind::ChatMl,
        "conv",
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>assistant\n<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n",
        None,
    ),
    (
        ChatTemplateKind::ChatMl,
        "conv_nogen",
        "<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n",
        None,
    ),
];

#[test]
fn rendering_matches_dllama() {
    for &(kind, name, text, public) in DLLAMA {
        let (messages, gen_prompt) = conversation(name);
        let template = ChatTemplate::new(kind, "<EOS>");
        let ours = template.render(&messages, gen_prompt);
        let chatml_bug = kind == ChatTemplateKind::ChatMl && gen_prompt && messages.len() > 1;
        if chatml_bug {
            // dllama's chatml appends the generation prompt after every message; airllama once
            // at the end. dllama's text is exactly our per-message renderings concatenated.
            let per_message: String = messages
                .iter()
                .map(|m| template.render(std::slice::from_ref(m), true).text)
                .collect();
            assert_eq!(per_message, text, "{kind} {name}");
            let once = template.render(&messages, false).text + "<|im_start|>assistant\n";
            assert_eq!(ours.text, once, "{kind} {name}");
        } else {
            assert_eq!(ours.text, text, "{kind} {name}");
        }
        assert_eq!(ours.public_prompt.as_deref(), public, "{kind} {name}");
    }
}

#[test]
fn detection_follows_dllamas_markers_and_order() {
    // dllama: 1 (llama2), 2 (llama3), 3 (deepSeek3), 4 (chatml), "Not supported", 1.
    let cases: &[(&str, Result<ChatTemplateKind, ChatTemplateError>)] = &[
        ("{% if x %}[INST]{% endif %}", Ok(ChatTemplateKind::Llama2)),
        ("<|start_header_id|>", Ok(ChatTemplateKind::Llama3)),
        (
            "x<\u{ff5c}Assistant\u{ff5c}>y",
            Ok(ChatTemplateKind::DeepSeek3),
        ),
        (
            "{{'<|im_start|>' + message['role']}}",
            Ok(ChatTemplateKind::ChatMl),
        ),
        ("plain", Err(ChatTemplateError::Unsupported)),
        ("[INST]<|im_start|>", Ok(ChatTemplateKind::Llama2)),
    ];
    for (template, kind) in cases {
        assert_eq!(&ChatTemplateKind::detect(template), kind, "{template:?}");
    }
    // dllama's own test template (tokenizer-test.cpp) is llama3.
    let llama3 = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set \
        content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ \
        message['content'] | trim + '<|eot_id|>' %}{{ content }}{% endfor %}";
    assert_eq!(
        ChatTemplateKind::detect(llama3),
        Ok(ChatTemplateKind::Llama3)
    );
}

#[test]
fn names_parse_and_explicit_choice_wins() {
    for kind in ChatTemplateKind::ALL {
        assert_eq!(kind.name().parse::<ChatTemplateKind>(), Ok(kind));
        assert_eq!(
            kind.to_string().to_uppercase().parse::<ChatTemplateKind>(),
            Ok(kind)
        );
    }
    assert_eq!(
        "deepseek3".parse::<ChatTemplateKind>(),
        Ok(ChatTemplateKind::DeepSeek3)
    );
    assert_eq!(
        "mistral".parse::<ChatTemplateKind>(),
        Err(ChatTemplateError::UnknownName("mistral".into()))
    );
    assert_eq!(
        ChatTemplateKind::resolve(Some(ChatTemplateKind::Llama2), Some("<|im_start|>")),
        Ok(ChatTemplateKind::Llama2)
    );
    assert_eq!(
        ChatTemplateKind::resolve(None, None),
        Err(ChatTemplateError::Missing)
    );
}

#[test]
fn golden_tokenizer_has_no_template() {
    golden_or_skip!();
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/golden/llama-q40/tokenizer.t"
    );
    let tok = Tokenizer::load(&PathBuf::from(path)).unwrap();
    assert_eq!(tok.chat_template(), None);
    assert_eq!(
        ChatTemplateKind::resolve(None, tok.chat_template()),
        Err(ChatTemplateError::Missing)
    );
}

#[test]
fn smollm2_chat_prompt_encodes_like_hugging_face() {
    let Some(file) = tokenizer_support::smollm2() else {
        return;
    };
    let tok = Tokenizer::from_file(&file);
    let template = ChatTemplate::for_tokenizer(None, &tok).unwrap();
    assert_eq!(template.kind(), ChatTemplateKind::ChatMl);
    assert_eq!(template.eos(), "<|im_end|>");
    let explicit = ChatTemplate::for_tokenizer(Some(ChatTemplateKind::Llama3), &tok).unwrap();
    assert_eq!(explicit.kind(), ChatTemplateKind::Llama3);
    let prompt = template.render(&[ChatMessage::new(ChatRole::User, "What is 2+2?")], true);
    // Hugging Face's ids for the same text (see tests/tokenizer.rs).
    assert_eq!(
        tok.encode(&prompt.text, true, true).unwrap(),
        [
            1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198
        ]
    );
}
