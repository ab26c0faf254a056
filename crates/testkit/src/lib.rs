//! Dev-only helpers. `AggregateTest` is the given/when/then harness for aggregates:
//!
//! ```ignore
//! AggregateTest::<Order>::given(vec![created])
//!     .when(&OrderCommand::Place { .. })
//!     .then_expect_events(vec![placed]);
//! ```

use ficus_core::Aggregate;

/// Given past events, when a command is decided, then expect events or an error.
pub struct AggregateTest<A: Aggregate> {
    state: A,
}

/// The outcome of `when`, to be checked with one of the `then_*` methods.
pub struct AggregateOutcome<A: Aggregate> {
    state: A,
    result: Result<Vec<A::Event>, A::Error>,
}

impl<A: Aggregate> AggregateTest<A> {
    /// Starts from the fold of these events.
    pub fn given(events: Vec<A::Event>) -> Self {
        Self {
            state: A::replay(events.iter()),
        }
    }

    /// Starts from an aggregate that has no events.
    pub fn given_no_previous_events() -> Self {
        Self::given(Vec::new())
    }

    pub fn when(self, command: &A::Command) -> AggregateOutcome<A> {
        let result = self.state.decide(command);
        AggregateOutcome {
            state: self.state,
            result,
        }
    }
}

impl<A: Aggregate> AggregateOutcome<A>
where
    A::Event: PartialEq,
{
    /// Asserts the command succeeded with exactly these events; returns the state after them.
    #[track_caller]
    pub fn then_expect_events(self, expected: Vec<A::Event>) -> A {
        match self.result {
            Ok(events) => {
                assert_eq!(events, expected, "unexpected events");
                let mut state = self.state;
                for e in &events {
                    state.evolve(e);
                }
                state
            }
            Err(e) => panic!("expected events {expected:?}, got error: {e}"),
        }
    }

    /// Asserts the command was refused; returns the error for further checks.
    #[track_caller]
    pub fn then_expect_error(self) -> A::Error {
        match self.result {
            Ok(events) => panic!("expected an error, got events {events:?}"),
            Err(e) => e,
        }
    }

    /// Asserts the command was refused with an error whose message contains `needle`.
    #[track_caller]
    pub fn then_expect_error_message(self, needle: &str) {
        let err = self.then_expect_error().to_string();
        assert!(
            err.contains(needle),
            "error {err:?} does not contain {needle:?}"
        );
    }
}
