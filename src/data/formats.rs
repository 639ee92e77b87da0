//! Record formats, as LLaMA-Factory reads them (data/converter.py): alpaca, sharegpt, OpenAI-style
//! messages, and plain text for continued pre-training. Each record becomes an [`Example`].

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::error::RecordProblem;
use crate::tokenizer::Message;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Alpaca,
    ShareGpt,
    Messages,
    Text,
}

impl Format {
    pub const NAMES: &'static str = "alpaca, sharegpt, messages, text";

    pub fn name(self) -> &'static str {
        match self {
            Format::Alpaca => "alpaca",
            Format::ShareGpt => "sharegpt",
            Format::Messages => "messages",
            Format::Text => "text",
        }
    }

    /// The format whose fields `record` has; checked on the first record of a file.
    pub fn detect(record: &Value) -> Result<Format, RecordProblem> {
        let object = as_object(record)?;
        let has = |k: &str| object.contains_key(k);
        if has("conversations") {
            Ok(Format::ShareGpt)
        } else if has("messages") {
            Ok(Format::Messages)
        } else if has("instruction") {
            Ok(Format::Alpaca)
        } else if has("text") {
            Ok(Format::Text)
        } else {
            Err(RecordProblem::UnknownFormat {
                fields: object.keys().cloned().collect::<Vec<_>>().join(", "),
            })
        }
    }

    /// Turns one record of this format into an example.
    pub fn convert(self, record: &Value) -> Result<Example, RecordProblem> {
        let object = as_object(record)?;
        match self {
            Format::Alpaca => alpaca(object).map(Example::Chat),
            Format::ShareGpt => turns(object, ShareGptKeys::SHAREGPT).map(Example::Chat),
            Format::Messages => turns(object, ShareGptKeys::MESSAGES).map(Example::Chat),
            Format::Text => string_field(object, "text", "text").map(Example::Text),
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "alpaca" => Ok(Format::Alpaca),
            "sharegpt" => Ok(Format::ShareGpt),
            "messages" | "openai" => Ok(Format::Messages),
            "text" => Ok(Format::Text),
            _ => Err(format!(
                "unknown data format `{s}` (expected one of {})",
                Format::NAMES
            )),
        }
    }
}

/// A record, ready for the template: a conversation, or raw text learned whole.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    Chat(Vec<Message>),
    Text(String),
}

fn as_object(record: &Value) -> Result<&Map<String, Value>, RecordProblem> {
    record.as_object().ok_or(RecordProblem::NotObject {
        found: kind(record),
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn string_field(
    object: &Map<String, Value>,
    field: &str,
    format: &'static str,
) -> Result<String, RecordProblem> {
    match object.get(field) {
        None | Some(Value::Null) => Err(RecordProblem::MissingField {
            format,
            field: field.into(),
        }),
        Some(v) => v
            .as_str()
            .map(String::from)
            .ok_or(RecordProblem::WrongType {
                field: field.into(),
                expected: "a string",
            }),
    }
}

/// An optional string field: absent, null and "" all mean none.
fn optional_string(
    object: &Map<String, Value>,
    field: &str,
) -> Result<Option<String>, RecordProblem> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(RecordProblem::WrongType {
            field: field.into(),
            expected: "a string",
        }),
    }
}

/// alpaca: [system], history pairs (each learned), then `instruction` + "\n" + `input` → `output`,
/// as LLaMA-Factory's AlpacaDatasetConverter.
fn alpaca(object: &Map<String, Value>) -> Result<Vec<Message>, RecordProblem> {
    let instruction = string_field(object, "instruction", "alpaca")?;
    let output = string_field(object, "output", "alpaca")?;
    let mut messages = Vec::new();
    if let Some(system) = optional_string(object, "system")? {
        messages.push(Message::new("system", &system));
    }
    for (prompt, response) in history(object)? {
        messages.push(Message::new("user", &prompt));
        messages.push(Message::new("assistant", &response));
    }
    let prompt = match optional_string(object, "input")? {
        Some(input) if !instruction.is_empty() => format!("{instruction}\n{input}"),
        Some(input) => input,
        None => instruction,
    };
    messages.push(Message::new("user", &prompt));
    messages.push(Message::new("assistant", &output));
    Ok(messages)
}

/// alpaca `history`: `[[prompt, response], ...]`.
fn history(object: &Map<String, Value>) -> Result<Vec<(String, String)>, RecordProblem> {
    let wrong = || RecordProblem::WrongType {
        field: "history".into(),
        expected: "a list of [prompt, response] string pairs",
    };
    let items = match object.get("history") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(wrong()),
    };
    items
        .iter()
        .map(|pair| match pair.as_array().map(Vec::as_slice) {
            Some([Value::String(p), Value::String(r)]) => Ok((p.clone(), r.clone())),
            _ => Err(wrong()),
        })
        .collect()
}

/// The field names and role names of a list-of-turns format.
struct ShareGptKeys {
    format: &'static str,
    list: &'static str,
    role: &'static str,
    content: &'static str,
    expected: &'static str,
}

impl ShareGptKeys {
    const SHAREGPT: Self = Self {
        format: "sharegpt",
        list: "conversations",
        role: "from",
        content: "value",
        expected: "system, human, gpt",
    };
    const MESSAGES: Self = Self {
        format: "messages",
        list: "messages",
        role: "role",
        content: "content",
        expected: "system, user, assistant",
    };

    /// Our role for a role tag; sharegpt files in the wild also use user/assistant.
    fn role(&self, tag: &str) -> Option<&'static str> {
        match tag {
            "system" => Some("system"),
            "user" | "human" => Some("user"),
            "assistant" | "gpt" => Some("assistant"),
            _ => None,
        }
    }
}

/// sharegpt / messages: a list of `{role, content}` turns with at least one assistant turn.
fn turns(object: &Map<String, Value>, keys: ShareGptKeys) -> Result<Vec<Message>, RecordProblem> {
    let items = match object.get(keys.list) {
        None | Some(Value::Null) => {
            return Err(RecordProblem::MissingField {
                format: keys.format,
                field: keys.list.into(),
            })
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(RecordProblem::WrongType {
                field: keys.list.into(),
                expected: "a list of turns",
            })
        }
    };
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let turn = item.as_object().ok_or_else(|| RecordProblem::WrongType {
            field: format!("{}[{index}]", keys.list),
            expected: "an object",
        })?;
        let field = |name: &str| format!("{}[{index}].{name}", keys.list);
        let tag = match turn.get(keys.role) {
            Some(Value::String(tag)) => tag.trim(),
            None | Some(Value::Null) => {
                return Err(RecordProblem::MissingField {
                    format: keys.format,
                    field: field(keys.role),
                })
            }
            Some(_) => {
                return Err(RecordProblem::WrongType {
                    field: field(keys.role),
                    expected: "a string",
                })
            }
        };
        if tag.is_empty() {
            return Err(RecordProblem::EmptyRole { index });
        }
        let role = keys.role(tag).ok_or_else(|| RecordProblem::UnknownRole {
            index,
            role: tag.into(),
            expected: keys.expected,
        })?;
        let content = match turn.get(keys.content) {
            Some(Value::String(s)) => s,
            None | Some(Value::Null) => {
                return Err(RecordProblem::MissingField {
                    format: keys.format,
                    field: field(keys.content),
                })
            }
            Some(_) => {
                return Err(RecordProblem::WrongType {
                    field: field(keys.content),
                    expected: "a string",
                })
            }
        };
        messages.push(Message::new(role, content));
    }
    if !messages.iter().any(|m| m.role == "assistant") {
        return Err(RecordProblem::NoAssistantTurn);
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case::alpaca(json!({"instruction": "a", "output": "b"}), Format::Alpaca)]
    #[case::sharegpt(json!({"conversations": []}), Format::ShareGpt)]
    #[case::messages(json!({"messages": []}), Format::Messages)]
    #[case::text(json!({"text": "x"}), Format::Text)]
    fn the_format_is_detected_from_the_fields(#[case] record: Value, #[case] format: Format) {
        assert_eq!(Format::detect(&record), Ok(format));
    }

    #[test]
    fn unknown_fields_are_an_error_listing_them() {
        let problem = Format::detect(&json!({"prompt": "a", "answer": "b"})).unwrap_err();
        assert!(
            problem.to_string().contains("[prompt, answer]"),
            "{problem}"
        );
    }

    #[test]
    fn alpaca_joins_instruction_and_input_and_keeps_system_and_history() {
        let record = json!({"system": "S", "history": [["p1", "r1"]], "instruction": "do", "input": "this", "output": "done"});
        let Example::Chat(messages) = Format::Alpaca.convert(&record).unwrap() else {
            panic!("not a chat")
        };
        let expected = [
            ("system", "S"),
            ("user", "p1"),
            ("assistant", "r1"),
            ("user", "do\nthis"),
            ("assistant", "done"),
        ];
        let got: Vec<(&str, &str)> = messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn sharegpt_roles_map_to_chat_roles() {
        let record = json!({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]});
        let example = Format::ShareGpt.convert(&record).unwrap();
        assert_eq!(
            example,
            Example::Chat(vec![
                Message::new("user", "hi"),
                Message::new("assistant", "hello")
            ])
        );
    }

    #[rstest]
    #[case::alpaca_without_output(Format::Alpaca, json!({"instruction": "a"}), "alpaca record is missing the field `output`")]
    #[case::sharegpt_without_conversations(Format::ShareGpt, json!({"messages": []}), "missing the field `conversations`")]
    #[case::messages_without_content(Format::Messages, json!({"messages": [{"role": "user"}]}), "missing the field `messages[0].content`")]
    #[case::text_without_text(Format::Text, json!({"body": "x"}), "text record is missing the field `text`")]
    #[case::empty_role(Format::Messages, json!({"messages": [{"role": "", "content": "x"}]}), "message 0 has an empty role")]
    #[case::unknown_role(Format::ShareGpt, json!({"conversations": [{"from": "bot", "value": "x"}]}), "role `bot`")]
    #[case::no_assistant(Format::Messages, json!({"messages": [{"role": "user", "content": "x"}]}), "no assistant turn")]
    #[case::content_not_a_string(Format::Messages, json!({"messages": [{"role": "user", "content": 3}]}), "`messages[0].content` should be a string")]
    #[case::not_an_object(Format::Alpaca, json!(["a"]), "must be a JSON object, found an array")]
    fn bad_records_are_errors_naming_the_problem(
        #[case] format: Format,
        #[case] record: Value,
        #[case] message: &str,
    ) {
        let problem = format.convert(&record).unwrap_err().to_string();
        assert!(problem.contains(message), "{problem}");
    }
}
