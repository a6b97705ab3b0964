use super::*;

#[test]
fn modes_parse_and_name_themselves() {
    for mode in ["auto", "json_schema", "JSON_OBJECT", " off "] {
        let parsed: StructuredMode = mode.parse().unwrap();
        assert!(mode.trim().eq_ignore_ascii_case(parsed.as_str()));
    }
    let e = "strict".parse::<StructuredMode>().unwrap_err();
    assert!(e.contains("auto|json_schema|json_object|off|tools"), "{e}");
}

#[test]
fn both_forms_carry_the_schema_and_text_none() {
    let schema = json!({"type": "object"});
    let a = Form::JsonSchema.response_format(&schema).unwrap();
    assert_eq!(a["type"], "json_schema");
    assert_eq!(a["json_schema"]["schema"], schema);
    assert_eq!(a["json_schema"]["name"], "mission_plan");
    let b = Form::JsonObject.response_format(&schema).unwrap();
    assert_eq!(
        (b["type"].clone(), b["schema"].clone()),
        (json!("json_object"), schema.clone())
    );
    assert_eq!(Form::Text.response_format(&schema), None);
}

#[test]
fn refusals_exclude_auth_and_load_statuses() {
    for status in [400, 404, 415, 422, 500, 501] {
        assert!(is_form_refusal(status), "{status}");
    }
    for status in [200, 401, 403, 408, 429, 502, 503, 504] {
        assert!(!is_form_refusal(status), "{status}");
    }
}

#[test]
fn tools_go_to_mana_llm_in_auto_and_an_ignoring_server_falls_back() {
    let url = "http://unit-test-tools.invalid/v1/chat/completions";
    let picker = FormPicker::new(StructuredMode::Auto, url, true, true);
    assert_eq!(picker.form(), Form::JsonSchema);
    picker.accepted(true);
    let mut picker = FormPicker::new(StructuredMode::Auto, url, true, true);
    assert_eq!(picker.form(), Form::Tools);
    let no_tools = FormPicker::new(StructuredMode::Auto, url, true, false);
    assert_eq!(no_tools.form(), Form::JsonSchema);
    assert!(
        !picker.would_refuse(500, None),
        "a 5xx is no verdict on tools"
    );
    assert!(!picker.would_refuse(502, Some(GatewayKind::Unknown)));
    assert!(
        picker.would_refuse(400, None),
        "a 4xx refuses the tools field"
    );
    assert!(picker.tools_ignored());
    assert_eq!(picker.form(), Form::JsonSchema);
    assert_eq!(tool_support(url), Some(ToolSupport::Ignored));
    let again = FormPicker::new(StructuredMode::Auto, url, true, true);
    assert_eq!(again.form(), Form::JsonSchema);
    // A fixed mode keeps its form.
    let mut fixed = FormPicker::new(StructuredMode::Tools, url, true, true);
    assert!(!fixed.tools_ignored());
    assert!(!fixed.would_refuse(400, Some(GatewayKind::Capability)));
}

#[test]
fn capability_moves_auto_on_and_other_kinds_never_do() {
    let url = "http://unit-test-kinds.invalid/v1/chat/completions";
    remember(url, Form::JsonSchema, &[]);
    let mut picker = FormPicker::new(StructuredMode::Auto, url, true, true);
    assert!(
        !picker.would_refuse(400, None),
        "learned: a 400 is an error"
    );
    assert!(!picker.would_refuse(422, Some(GatewayKind::Blocked)));
    assert!(picker.refused(400, Some(GatewayKind::Capability)));
    assert_eq!(picker.form(), Form::JsonObject);
}

#[test]
fn a_learned_form_is_kept_and_first_in_auto_only() {
    let url = "http://unit-test.invalid/v1/chat/completions";
    assert_eq!(first_form(StructuredMode::Auto, url), Form::JsonSchema);
    remember(url, Form::JsonObject, &[(Form::JsonSchema, 500)]);
    remember(url, Form::Text, &[]);
    assert_eq!(first_form(StructuredMode::Auto, url), Form::JsonObject);
    assert_eq!(
        first_form(StructuredMode::JsonSchema, url),
        Form::JsonSchema
    );
    assert_eq!(first_form(StructuredMode::Off, url), Form::Text);
}
