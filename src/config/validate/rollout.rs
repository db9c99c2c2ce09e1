//! The rollout settings: its id (the hash's salt) and its percent or steps.

use crate::config::checker::{Checker, at, parse_duration};
use crate::config::error::Reason;
use crate::config::file::{File, S, StepFile};
use crate::config::{Plan, RolloutPlan, Step, percent_to_ppm};

use super::MAX_ROLLOUT_ID;

/// A rollout id: the salt of the assignment hash; one word (it is typed in `ramp ctl start`).
pub fn rollout_id(id: &str) -> Result<String, Reason> {
    if id.is_empty() {
        return Err(Reason::Empty);
    }
    if id.len() > MAX_ROLLOUT_ID {
        return Err(Reason::TooLong {
            max: MAX_ROLLOUT_ID,
            got: id.len(),
        });
    }
    if id
        .chars()
        .any(|ch| ch.is_control() || ch.is_whitespace() || invisible(ch))
    {
        return Err(Reason::Printable(id.to_owned()));
    }
    Ok(id.to_owned())
}

/// Characters that show nothing: Unicode's default-ignorable code points and its other format
/// characters (category Cf), such as U+200B, U+FEFF, U+034F, the variation selectors, and the
/// ones that turn text around (U+202E). An id holding one looks like another id while salting the
/// hash differently.
fn invisible(ch: char) -> bool {
    matches!(
        ch,
        '\u{00AD}'
            | '\u{034F}'
            | '\u{0600}'..='\u{0605}'
            | '\u{061C}'
            | '\u{06DD}'
            | '\u{070F}'
            | '\u{0890}'..='\u{0891}'
            | '\u{08E2}'
            | '\u{115F}'..='\u{1160}'
            | '\u{17B4}'..='\u{17B5}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{206F}'
            | '\u{3164}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{FFA0}'
            | '\u{FFF0}'..='\u{FFFB}'
            | '\u{110BD}'
            | '\u{110CD}'
            | '\u{13430}'..='\u{1343F}'
            | '\u{16FE4}'
            | '\u{1BCA0}'..='\u{1BCA3}'
            | '\u{1D173}'..='\u{1D17A}'
            | '\u{E0000}'..='\u{E0FFF}'
    )
}

pub(super) fn rollout(c: &mut Checker, file: &File) -> Option<RolloutPlan> {
    let r = &file.rollout.value;
    let id = c.check(&r.id, "rollout.id", |s| rollout_id(s));
    let plan = match (&r.percent, &r.steps) {
        (Some(p), None) => c
            .check(p, "rollout.percent", |&p| percent_to_ppm(p))
            .map(Plan::Percent),
        (None, Some(steps)) => self::steps(c, steps).map(Plan::Steps),
        (Some(p), Some(_)) => {
            c.fail(at(p), "rollout", Reason::PercentAndSteps);
            None
        }
        (None, None) => {
            c.fail(at(&file.rollout), "rollout", Reason::NoPercent);
            None
        }
    };
    Some(RolloutPlan {
        id: id?,
        plan: plan?,
    })
}

fn steps(c: &mut Checker, steps: &S<Vec<StepFile>>) -> Option<Vec<Step>> {
    if steps.value.is_empty() {
        c.fail(at(steps), "rollout.steps", Reason::Empty);
        return None;
    }
    let before = c.problems.len();
    let mut out = Vec::with_capacity(steps.value.len());
    for (i, step) in steps.value.iter().enumerate() {
        let field = format!("rollout.steps[{i}].percent");
        let Some(ppm) = c.check(&step.percent, &field, |&p| percent_to_ppm(p)) else {
            continue;
        };
        let last = i + 1 == steps.value.len();
        let hold = match &step.hold {
            Some(h) => c.check(h, &format!("rollout.steps[{i}].hold"), |s| {
                parse_duration(s)
            }),
            None if last => None,
            None => {
                c.fail(
                    at(&step.percent),
                    &format!("rollout.steps[{i}]"),
                    Reason::MissingHold,
                );
                None
            }
        };
        if let Some(prev) = out.last().map(|s: &Step| s.ppm)
            && ppm <= prev
        {
            c.fail(
                at(&step.percent),
                &field,
                Reason::StepsNotRising {
                    prev: crate::config::ppm_to_percent(prev),
                    next: step.percent.value,
                },
            );
        }
        out.push(Step { ppm, hold });
    }
    (c.problems.len() == before).then_some(out)
}
