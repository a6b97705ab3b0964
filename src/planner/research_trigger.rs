//! When a mission gets a web-research pre-step, and how its articles reach
//! the prompt (contract section 6). The HTTP client lives in `research.rs`
//! and reuses [`Article`] from here.

use std::fmt::Write;

use serde::{Deserialize, Deserializer, Serialize};

use super::prompt::ResolvedInput;
use super::text::clip;

/// Words that ask for current or outside knowledge. Matched at a word start,
/// so "Suche" and "Newsletter" match, "besuche" and "renews" do not.
const TRIGGERS: [&str; 11] = [
    "recherchier",
    "research",
    "news",
    "finde",
    "suche",
    "aktuelle",
    "neueste",
    "today",
    "history",
    "historisch",
    "on this day",
];

/// Articles listed in the prompt; the search asks for 8.
pub const MAX_ARTICLES: usize = 10;
const MAX_ARTICLE_TITLE_CHARS: usize = 200;
const MAX_EXCERPT_CHARS: usize = 500;
const MAX_URL_CHARS: usize = 500;

/// True when the objective or the concept asks for research.
pub fn needs_research(objective: &str, concept: &str) -> bool {
    matches_trigger(objective) || matches_trigger(concept)
}

fn matches_trigger(text: &str) -> bool {
    let folded = fold(text);
    TRIGGERS.iter().any(|word| {
        folded.match_indices(word).any(|(pos, _)| {
            // The character before the match, read backwards in O(1).
            let before = folded[..pos].chars().next_back();
            !before.is_some_and(char::is_alphanumeric)
        })
    })
}

/// Unicode lowercase with every whitespace run made one space, so
/// "On  this\nday" matches. Lowercasing can change byte lengths, so word
/// starts are judged on this folded text, never on the original.
fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.extend(c.to_lowercase());
            in_space = false;
        }
    }
    out
}

/// One article from `news-research/search`. Every field is optional on the
/// wire: one odd article must not cost the whole research step.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Article {
    #[serde(deserialize_with = "null_as_empty")]
    pub url: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub title: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub excerpt: String,
    pub published_at: Option<String>,
    pub feed_url: Option<String>,
    pub score: Option<f64>,
}

fn null_as_empty<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
}

/// The research result as one more input. Articles without an http(s) URL
/// are dropped: the model is told to cite only listed URLs, so every listed
/// one must be a link the user can open.
pub fn research_input(articles: &[Article]) -> ResolvedInput {
    let usable = articles
        .iter()
        .filter(|a| is_web_url(&a.url))
        .take(MAX_ARTICLES);
    let mut content = String::from(
        "Aktuelle Artikel aus einer Web-Recherche zum Ziel der Mission. Verwende ausschließlich \
         die URLs aus dieser Liste und erfinde keine weiteren Links oder Quellen.\n",
    );
    let mut listed = 0;
    for (i, article) in usable.enumerate() {
        listed += 1;
        let title = clip(article.title.trim(), MAX_ARTICLE_TITLE_CHARS);
        let title = if title.is_empty() {
            "(ohne Titel)".into()
        } else {
            title
        };
        let _ = writeln!(content, "\n{}. {title}", i + 1);
        let _ = writeln!(
            content,
            "   URL: {}",
            clip(article.url.trim(), MAX_URL_CHARS)
        );
        let published = article
            .published_at
            .as_deref()
            .filter(|p| !p.trim().is_empty());
        let published = clip(published.unwrap_or("unbekannt"), 40);
        let _ = writeln!(content, "   Veröffentlicht: {published}");
        if !article.excerpt.trim().is_empty() {
            let excerpt = clip(article.excerpt.trim(), MAX_EXCERPT_CHARS);
            let _ = writeln!(content, "   Auszug: {excerpt}");
        }
    }
    if listed == 0 {
        content.push_str("\nDie Recherche hat keine Artikel gefunden; nenne daher keine URLs.\n");
    }
    ResolvedInput {
        id: "__web-research__".into(),
        module: "news-research".into(),
        table: "web".into(),
        title: "Web-Recherche".into(),
        content,
    }
}

fn is_web_url(url: &str) -> bool {
    let url = url.trim();
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("https://") || lower.starts_with("http://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_match_at_word_starts_only() {
        let yes = [
            "Suche Rezepte",
            "NEWS zum Klima",
            "Bitte recherchiere das",
            "finden wir Zeit?",
            "die aktuellen Zahlen",
            "(research) first",
            "Was geschah On  This\nDay?",
            "Die NEUESTE Studie",
            "Geschichte: Historische Orte",
            "ÄNDERUNG: today",
            "mail:news",
        ];
        for text in yes {
            assert!(needs_research(text, ""), "{text}");
            assert!(needs_research("", text), "{text}");
        }
        let no = [
            "Ich besuche Oma",
            "renews the lease",
            "Versuche es",
            "Wochenplan",
            "prehistory",
            "ÄSuche",
            "2news",
            "",
        ];
        for text in no {
            assert!(!needs_research(text, text), "{text}");
        }
    }

    #[test]
    fn articles_deserialize_leniently() {
        let articles: Vec<Article> = serde_json::from_str(
            r#"[{"url": "https://a.example/1", "title": null, "publishedAt": "2025-01-01",
                 "feedUrl": "https://a.example/feed", "score": 0.7, "extra": 1},
                {}]"#,
        )
        .unwrap();
        assert_eq!(articles[0].title, "");
        assert_eq!(articles[0].published_at.as_deref(), Some("2025-01-01"));
        assert_eq!(articles[0].score, Some(0.7));
        assert_eq!(articles[1], Article::default());
    }

    #[test]
    fn research_input_lists_articles_and_restricts_urls() {
        let article = |url: &str, title: &str| Article {
            url: url.into(),
            title: title.into(),
            excerpt: "Kurzfassung".into(),
            published_at: Some("2025-02-03T10:00:00Z".into()),
            ..Article::default()
        };
        let input = research_input(&[
            article("https://news.example/a", "Erster"),
            article("javascript:alert(1)", "Böse"),
            article("", "Leer"),
            article("HTTP://news.example/b", ""),
        ]);
        assert_eq!(
            (
                input.id.as_str(),
                input.module.as_str(),
                input.table.as_str()
            ),
            ("__web-research__", "news-research", "web")
        );
        let c = &input.content;
        assert!(
            c.contains("ausschließlich die URLs aus dieser Liste"),
            "{c}"
        );
        assert!(c.contains("1. Erster\n   URL: https://news.example/a\n   Veröffentlicht: 2025-02-03T10:00:00Z\n   Auszug: Kurzfassung\n"), "{c}");
        assert!(
            c.contains("2. (ohne Titel)\n   URL: HTTP://news.example/b"),
            "{c}"
        );
        assert!(!c.contains("Böse") && !c.contains("Leer"), "{c}");

        let empty = research_input(&[]);
        assert!(empty.content.contains("keine Artikel gefunden"));
    }
}
