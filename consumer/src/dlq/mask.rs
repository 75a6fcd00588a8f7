//! Masking of personal fields in a JSON payload, for `dlq show` without `--reveal`.
//!
//! A field is personal when its name is one of [`PERSONAL_FIELDS`], at any depth. The
//! `TransactionEvent` keeps its personal data in `recipient.email` and
//! `recipient.display_name`; the wider list also covers foreign payloads in a shared
//! dead-letter topic. Masking keeps the first character and the length class of each
//! part, so an operator can tell two values apart without reading them.

use serde_json::Value;

/// Field names whose string values are masked, compared case-insensitively.
pub const PERSONAL_FIELDS: [&str; 12] = [
    "email",
    "display_name",
    "name",
    "first_name",
    "last_name",
    "full_name",
    "phone",
    "phone_number",
    "address",
    "street",
    "iban",
    "card_holder",
];

fn is_personal(field: &str) -> bool {
    PERSONAL_FIELDS
        .iter()
        .any(|personal| personal.eq_ignore_ascii_case(field))
}

/// Masks one text: `jane.doe@example.com` becomes `j***@e***.com`, `Jane Doe` becomes
/// `J*** D***`.
pub fn mask_text(text: &str) -> String {
    if let Some((local, domain)) = text.split_once('@') {
        let (host, tld) = domain.rsplit_once('.').unwrap_or((domain, ""));
        let tld = if tld.is_empty() {
            String::new()
        } else {
            format!(".{tld}")
        };
        return format!("{}@{}{tld}", mask_word(local), mask_word(host));
    }
    text.split(' ').map(mask_word).collect::<Vec<_>>().join(" ")
}

fn mask_word(word: &str) -> String {
    match word.chars().next() {
        Some(first) => format!("{first}***"),
        None => String::new(),
    }
}

/// Masks every personal string field of `value` in place and returns how many it masked.
pub fn mask_personal_fields(value: &mut Value) -> usize {
    match value {
        Value::Object(map) => {
            let mut masked = 0;
            for (field, child) in map.iter_mut() {
                match child {
                    Value::String(text) if is_personal(field) => {
                        *text = mask_text(text);
                        masked += 1;
                    }
                    _ => masked += mask_personal_fields(child),
                }
            }
            masked
        }
        Value::Array(items) => items.iter_mut().map(mask_personal_fields).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn texts_are_masked() {
        let cases = [
            ("jane.doe@example.com", "j***@e***.com"),
            ("x@localhost", "x***@l***"),
            ("Jane Doe", "J*** D***"),
            ("Émile", "É***"),
            ("", ""),
        ];
        for (input, expected) in cases {
            assert_eq!(mask_text(input), expected, "{input}");
        }
    }

    #[test]
    fn event_recipient_is_masked() {
        let mut event = json!({
            "event_id": "e",
            "account_id": "acct-1",
            "recipient": {"email": "jane@example.com", "display_name": "Jane Doe", "locale": "en"},
            "merchant": "Shop",
            "metadata": {"Name": "Jane"},
            "items": [{"email": "a@b.c"}],
        });
        assert_eq!(mask_personal_fields(&mut event), 4);
        assert_eq!(event["recipient"]["email"], "j***@e***.com");
        assert_eq!(event["recipient"]["display_name"], "J*** D***");
        assert_eq!(event["recipient"]["locale"], "en");
        assert_eq!(event["metadata"]["Name"], "J***");
        assert_eq!(event["items"][0]["email"], "a***@b***.c");
        assert_eq!(event["account_id"], "acct-1");
        assert_eq!(event["merchant"], "Shop");
    }

    #[test]
    fn non_string_personal_fields_are_walked() {
        let mut value = json!({"address": {"street": "Main St 1", "city": "Berlin"}});
        assert_eq!(mask_personal_fields(&mut value), 1);
        assert_eq!(value["address"]["street"], "M*** S*** 1***");
        assert_eq!(value["address"]["city"], "Berlin");
    }
}
