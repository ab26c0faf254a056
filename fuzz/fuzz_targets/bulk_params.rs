//! Fuzzes the parameter checks of `POST /v1/bulk-jobs`: byte 0 picks the job kind, the rest is
//! the `params` JSON, through `check_params` (what a submission checks before it reads the read
//! models). Nothing may panic; a refusal is `Invalid` (400 `invalid_job`); accepted parameters
//! keep every bound the planner relies on.
#![no_main]

use ficus_domain::jobs::{
    check_params, plan_export, repriced, BulkJobError, JobParams, EXPORT_MAX_DAYS,
    MESSAGE_MAX_CHARS, SAMPLE_REPORT_MAX_BYTES,
};
use libfuzzer_sys::fuzz_target;

const KINDS: [&str; 5] = [
    "reprice_category",
    "export_orders",
    "notify_buyers",
    "sample_report",
    "no_such_kind",
];

fuzz_target!(|data: &[u8]| {
    let [pick, body @ ..] = data else {
        return;
    };
    let Ok(params) = serde_json::from_slice::<serde_json::Value>(body) else {
        return;
    };
    let kind = KINDS[*pick as usize % KINDS.len()];
    match check_params(kind, &params) {
        Ok(JobParams::Reprice { category, percent }) => {
            assert!(!category.trim().is_empty());
            assert!((-100..=1000).contains(&percent) && percent != 0);
            // Any stored price, however large, reprices without overflow.
            for price in [0, 1, 999_999, i64::MAX] {
                let p = repriced(price, percent);
                assert!(
                    p >= 0,
                    "a non-negative price stays non-negative ({price} {percent}%)"
                );
            }
        }
        Ok(JobParams::Export { from_day, to_day }) => {
            assert!(from_day <= to_day && to_day - from_day < EXPORT_MAX_DAYS);
            let (items, _) = plan_export(from_day, to_day);
            assert_eq!(items.len() as i64, to_day - from_day + 1);
        }
        Ok(JobParams::Notify {
            product_id,
            message,
        }) => {
            assert!(!product_id.trim().is_empty() && !message.trim().is_empty());
            assert!(message.chars().count() <= MESSAGE_MAX_CHARS);
        }
        Ok(JobParams::SampleReport {
            size_bytes,
            preface,
        }) => {
            assert!((1..=SAMPLE_REPORT_MAX_BYTES).contains(&size_bytes));
            assert!(preface.len() as u64 <= size_bytes);
        }
        Err(BulkJobError::Invalid(m)) => assert!(!m.is_empty()),
        Err(other) => panic!("a parameter check refuses with Invalid, not {other:?}"),
    }
    assert!(
        kind != "no_such_kind" || check_params(kind, &params).is_err(),
        "an unknown kind is refused"
    );
});
