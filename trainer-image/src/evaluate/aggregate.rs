//! From stored answers and judgements to the round's [`Summary`] (pure, no I/O).
//!
//! An answer's score is the mean over its successful judgements of each judgement's score
//! (min(similarity, precision) for the judge). Failed judgements are counted and left out;
//! an answer none of whose judgements succeeded is counted as unscored and left out of the
//! means, never scored as zero. The mean and passRate run over scored answers.

use std::collections::{BTreeMap, HashSet};

use llamaduo::api::{Metric, Scores, TokenUsage};

use super::records::{
    AnswerRecord, Answerer, JudgementRecord, PromptSummary, SideSummary, Summary,
};

/// The fixed settings a summary reports.
#[derive(Clone, Debug, PartialEq)]
pub struct SummarySettings {
    /// The metric.
    pub metric: Metric,
    /// Score at or above which an answer passes.
    pub pass_score: f64,
    /// Answers per prompt.
    pub answers_per_prompt: u32,
    /// Judge samples per answer.
    pub judge_samples: u32,
    /// Whether the teacher baseline is part of the run.
    pub baseline: bool,
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// One answer's aggregated judgement.
#[derive(Clone, Debug, Default, PartialEq)]
struct AnswerScore {
    score: Option<f64>,
    similarity: Option<f64>,
    precision: Option<f64>,
}

fn score_answer(judgements: &[&JudgementRecord]) -> AnswerScore {
    let ok: Vec<&&JudgementRecord> = judgements.iter().filter(|j| j.score.is_some()).collect();
    let scores: Vec<f64> = ok.iter().filter_map(|j| j.score).collect();
    let sims: Vec<f64> = ok.iter().filter_map(|j| j.similarity).collect();
    let precs: Vec<f64> = ok.iter().filter_map(|j| j.precision).collect();
    AnswerScore {
        score: mean(&scores),
        similarity: mean(&sims),
        precision: mean(&precs),
    }
}

/// Summarizes one answerer's answers over the test prompts `prompt_ids` (in test-set order).
pub fn summarize_side(
    prompt_ids: &[String],
    answers: &[AnswerRecord],
    judgements: &[JudgementRecord],
    answerer: Answerer,
    pass_score: f64,
) -> SideSummary {
    // First record wins for any repeated key (a rerun never writes one, but be safe).
    let mut seen = HashSet::new();
    let mut by_answer: BTreeMap<&str, Vec<&JudgementRecord>> = BTreeMap::new();
    for j in judgements {
        if seen.insert((j.answer_id.as_str(), j.sample)) {
            by_answer.entry(j.answer_id.as_str()).or_default().push(j);
        }
    }
    let mut per_prompt_answers: BTreeMap<&str, BTreeMap<u32, &AnswerRecord>> = BTreeMap::new();
    for a in answers.iter().filter(|a| a.answerer == answerer) {
        per_prompt_answers
            .entry(a.prompt_id.as_str())
            .or_default()
            .entry(a.answer_index)
            .or_insert(a);
    }
    let mut side = SideSummary::default();
    let (mut all_scores, mut all_sims, mut all_precs) = (Vec::new(), Vec::new(), Vec::new());
    for pid in prompt_ids {
        let mut answer_scores = Vec::new();
        if let Some(list) = per_prompt_answers.get(pid.as_str()) {
            for a in list.values() {
                side.answers += 1;
                let js = by_answer.get(a.id.as_str()).cloned().unwrap_or_default();
                side.failed_judgements += js.iter().filter(|j| j.score.is_none()).count() as u64;
                let s = score_answer(&js);
                if let Some(score) = s.score {
                    side.scored_answers += 1;
                    all_scores.push(score);
                }
                all_sims.extend(s.similarity);
                all_precs.extend(s.precision);
                answer_scores.push(s.score);
            }
        }
        let scored: Vec<f64> = answer_scores.iter().flatten().copied().collect();
        side.per_prompt.push(PromptSummary {
            prompt_id: pid.clone(),
            mean: mean(&scored),
            pass_rate: pass_rate(&scored, pass_score),
            answer_scores,
        });
    }
    side.mean = mean(&all_scores).unwrap_or(0.0);
    side.pass_rate = pass_rate(&all_scores, pass_score).unwrap_or(0.0);
    side.similarity = mean(&all_sims);
    side.precision = mean(&all_precs);
    side
}

fn pass_rate(scores: &[f64], pass_score: f64) -> Option<f64> {
    (!scores.is_empty())
        .then(|| scores.iter().filter(|s| **s >= pass_score).count() as f64 / scores.len() as f64)
}

/// The whole summary: the student's side, the teacher's when the baseline is on, the
/// performance-matching ratio, and the service tokens recorded in the stored rows.
pub fn summarize(
    prompt_ids: &[String],
    answers: &[AnswerRecord],
    judgements: &[JudgementRecord],
    settings: &SummarySettings,
) -> Summary {
    // Only what the current settings ask for: a run retried after answersPerPrompt,
    // judgeSamples or the metric changed finds rows of the old settings in its ledgers, and
    // they would tilt the scores (the extra answers, samples or another metric's scores).
    let answers: Vec<AnswerRecord> = answers
        .iter()
        .filter(|a| a.answer_index < settings.answers_per_prompt)
        .cloned()
        .collect();
    let judgements: Vec<JudgementRecord> = judgements
        .iter()
        .filter(|j| j.sample < settings.judge_samples && j.metric == settings.metric)
        .cloned()
        .collect();
    let (answers, judgements) = (answers.as_slice(), judgements.as_slice());
    let student = summarize_side(
        prompt_ids,
        answers,
        judgements,
        Answerer::Student,
        settings.pass_score,
    );
    let teacher = settings.baseline.then(|| {
        summarize_side(
            prompt_ids,
            answers,
            judgements,
            Answerer::Teacher,
            settings.pass_score,
        )
    });
    let performance_matching = teacher
        .as_ref()
        .filter(|t| t.scored_answers > 0 && t.mean > 0.0 && student.scored_answers > 0)
        .map(|t| student.mean / t.mean);
    let mut service_tokens = TokenUsage::default();
    for a in answers {
        service_tokens += a.service_tokens;
    }
    for j in judgements {
        service_tokens += j.service_tokens;
    }
    Summary {
        metric: settings.metric,
        pass_score: settings.pass_score,
        answers_per_prompt: settings.answers_per_prompt,
        judge_samples: settings.judge_samples,
        prompts: prompt_ids.len() as u64,
        student,
        teacher,
        performance_matching,
        service_tokens,
        baseline_from_round: None,
    }
}

impl Summary {
    /// The scores the stage result and the migration status carry.
    pub fn scores(&self) -> Scores {
        Scores {
            mean: self.student.mean,
            pass_rate: self.student.pass_rate,
            similarity: self.student.similarity,
            precision: self.student.precision,
            performance_matching: self.performance_matching,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::records::answer_id;

    fn answer(who: Answerer, p: &str, i: u32) -> AnswerRecord {
        AnswerRecord {
            id: answer_id(who, p, i),
            answerer: who,
            prompt_id: p.into(),
            answer_index: i,
            text: "x".into(),
            finish_reason: None,
            tokens: 1,
            service_tokens: TokenUsage::default(),
        }
    }

    fn judged(who: Answerer, p: &str, i: u32, s: u32, sim: f64, prec: f64) -> JudgementRecord {
        JudgementRecord {
            answer_id: answer_id(who, p, i),
            sample: s,
            metric: Metric::Judge,
            score: Some(sim.min(prec)),
            similarity: Some(sim),
            precision: Some(prec),
            reason: None,
            error: None,
            attempts: 1,
            service_tokens: TokenUsage {
                input: 10,
                output: 2,
            },
        }
    }

    fn failed(who: Answerer, p: &str, i: u32, s: u32) -> JudgementRecord {
        JudgementRecord {
            score: None,
            similarity: None,
            precision: None,
            error: Some("no JSON".into()),
            attempts: 3,
            ..judged(who, p, i, s, 0.0, 0.0)
        }
    }

    fn settings(baseline: bool) -> SummarySettings {
        SummarySettings {
            metric: Metric::Judge,
            pass_score: 50.0,
            answers_per_prompt: 2,
            judge_samples: 2,
            baseline,
        }
    }

    #[test]
    fn hand_computed_judge_aggregation() {
        use Answerer::Student as S;
        let prompts = vec!["p1".to_string(), "p2".to_string()];
        let answers = vec![
            answer(S, "p1", 0),
            answer(S, "p1", 1),
            answer(S, "p2", 0),
            answer(S, "p2", 1),
        ];
        let judgements = vec![
            // p1/0: samples min(80,90)=80 and min(70,60)=60 -> 70; sim (80+70)/2=75, prec 75.
            judged(S, "p1", 0, 0, 80.0, 90.0),
            judged(S, "p1", 0, 1, 70.0, 60.0),
            // p1/1: one sample 40, the other failed -> 40 (not 20).
            judged(S, "p1", 1, 0, 40.0, 45.0),
            failed(S, "p1", 1, 1),
            // p2/0: both samples failed -> unscored, excluded.
            failed(S, "p2", 0, 0),
            failed(S, "p2", 0, 1),
            // p2/1: 100, 90 -> 95.
            judged(S, "p2", 1, 0, 100.0, 100.0),
            judged(S, "p2", 1, 1, 90.0, 95.0),
        ];
        let s = summarize(&prompts, &answers, &judgements, &settings(false));
        let st = &s.student;
        assert_eq!(st.answers, 4);
        assert_eq!(st.scored_answers, 3);
        assert_eq!(st.failed_judgements, 3);
        // mean of 70, 40, 95
        assert!((st.mean - 205.0 / 3.0).abs() < 1e-9, "{}", st.mean);
        assert!((st.pass_rate - 2.0 / 3.0).abs() < 1e-9);
        // similarity per answer: 75, 40, 95 -> 70; precision: 75, 45, 97.5 -> 72.5
        assert!((st.similarity.expect("sim") - 70.0).abs() < 1e-9);
        assert!((st.precision.expect("prec") - 72.5).abs() < 1e-9);
        assert_eq!(st.per_prompt[0].mean, Some(55.0));
        assert_eq!(st.per_prompt[0].pass_rate, Some(0.5));
        assert_eq!(st.per_prompt[1].answer_scores, vec![None, Some(95.0)]);
        assert_eq!(s.scores().performance_matching, None);
        assert_eq!(s.service_tokens.total(), 8 * 12);
    }

    #[test]
    fn performance_matching_is_student_over_teacher() {
        use Answerer::{Student as S, Teacher as T};
        let prompts = vec!["p".to_string()];
        let answers = vec![answer(S, "p", 0), answer(T, "p", 0)];
        let judgements = vec![
            judged(S, "p", 0, 0, 60.0, 60.0),
            judged(T, "p", 0, 0, 80.0, 90.0),
        ];
        let s = summarize(&prompts, &answers, &judgements, &settings(true));
        assert_eq!(s.teacher.as_ref().map(|t| t.mean), Some(80.0));
        assert_eq!(s.performance_matching, Some(0.75));
        assert_eq!(
            s.student.answers, 1,
            "teacher answers are not the student's"
        );
    }

    #[test]
    fn nothing_scored_gives_zero_mean_and_no_ratio() {
        use Answerer::{Student as S, Teacher as T};
        let prompts = vec!["p".to_string()];
        let answers = vec![answer(S, "p", 0), answer(T, "p", 0)];
        let judgements = vec![failed(S, "p", 0, 0), judged(T, "p", 0, 0, 80.0, 90.0)];
        let s = summarize(&prompts, &answers, &judgements, &settings(true));
        assert_eq!(s.student.scored_answers, 0);
        assert_eq!(s.student.failed_judgements, 1);
        assert_eq!(s.performance_matching, None);
    }

    #[test]
    fn rows_of_earlier_settings_are_left_out() {
        use Answerer::Student as S;
        let prompts = vec!["p".to_string()];
        // A run with answersPerPrompt 3 and judgeSamples 3 left answer 2 and samples 2 behind;
        // the settings are now 2 and 2.
        let answers = vec![answer(S, "p", 0), answer(S, "p", 1), answer(S, "p", 2)];
        let mut judgements = vec![
            judged(S, "p", 0, 0, 60.0, 60.0),
            judged(S, "p", 0, 1, 60.0, 60.0),
            judged(S, "p", 0, 2, 0.0, 0.0),
            judged(S, "p", 1, 0, 80.0, 80.0),
            judged(S, "p", 1, 1, 80.0, 80.0),
            judged(S, "p", 2, 0, 0.0, 0.0),
        ];
        let mut other_metric = judged(S, "p", 1, 0, 0.0, 0.0);
        other_metric.metric = Metric::RougeL;
        judgements.insert(0, other_metric);
        let s = summarize(&prompts, &answers, &judgements, &settings(false));
        assert_eq!(s.student.answers, 2);
        assert_eq!(s.student.mean, 70.0);
    }

    #[test]
    fn repeated_keys_count_once() {
        use Answerer::Student as S;
        let prompts = vec!["p".to_string()];
        let answers = vec![answer(S, "p", 0), answer(S, "p", 0)];
        let judgements = vec![
            judged(S, "p", 0, 0, 60.0, 60.0),
            judged(S, "p", 0, 0, 10.0, 10.0),
        ];
        let s = summarize(&prompts, &answers, &judgements, &settings(false));
        assert_eq!(s.student.answers, 1);
        assert_eq!(s.student.mean, 60.0);
    }
}
