//! What an OpenAI-compatible request says about where it should go: the `model` it asks
//! for and the prompt the `prefix` policy places by (`prompt`, or `messages` as sent: the
//! JSON text itself, so two requests with the same conversation so far share a prefix).
//! Read from the body the proxy already holds, borrowing from it (never a copy); the
//! `X-Registry-Prefix-Key` header, when sent, is the prompt instead.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// The header that gives the `prefix` policy its key instead of the body's prompt.
pub const PREFIX_HEADER: &str = "x-registry-prefix-key";

#[derive(serde::Deserialize, Default)]
struct Completion<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
}

/// A request body's routing facts.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inference<'b> {
    pub model: Option<Cow<'b, str>>,
    pub prompt: Option<&'b [u8]>,
}

/// The routing facts of `body` (none when it is not a JSON object).
pub fn inference_of(body: &[u8]) -> Inference<'_> {
    let Ok(completion) = serde_json::from_slice::<Completion<'_>>(body) else {
        return Inference::default();
    };
    Inference {
        model: completion.model,
        prompt: completion.prompt.or(completion.messages).map(text),
    }
}

/// A prompt's text as sent: a plain string without its quotes, anything else as written.
fn text(raw: &RawValue) -> &[u8] {
    let bytes = raw.get().as_bytes();
    if bytes.len() >= 2 && bytes[0] == b'"' {
        &bytes[1..bytes.len() - 1]
    } else {
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_and_chats_give_their_model_and_prompt() {
        let body = br#"{"model":"llama","prompt":"You are helpful.\nHi","max_tokens":5}"#;
        let got = inference_of(body);
        assert_eq!(got.model.as_deref(), Some("llama"));
        assert_eq!(got.prompt, Some(&br"You are helpful.\nHi"[..]));
        let chat = br#"{"messages":[{"role":"system","content":"S"}],"model":"m\u0031"}"#;
        let got = inference_of(chat);
        assert_eq!(got.model.as_deref(), Some("m1"));
        assert_eq!(got.prompt, Some(&br#"[{"role":"system","content":"S"}]"#[..]));
        assert_eq!(inference_of(b"not json"), Inference::default());
        assert_eq!(inference_of(br#"{"model":5}"#), Inference::default());
    }
}
