//! The hard token budget of a stage run. Before a request is sent its worst case (prompt
//! estimate plus max output tokens) is reserved; a request whose worst case could take the
//! total past the budget is refused. After the reply the reservation is replaced by the
//! tokens the provider reports, so `used()` is exact. An attempt that timed out may still be
//! billed (the provider finishes the generation), but no count comes back: its worst case is
//! *presumed* spent, which counts against the limit without entering `used()`.

use std::sync::{Arc, Mutex};

use llamaduo::api::TokenUsage;

use crate::error::LlmError;

/// Tokens used and reserved against an optional limit; shared by every client of a stage
/// (teacher and judge count against the same budget).
#[derive(Debug, Default)]
pub struct TokenBudget {
    limit: Option<u64>,
    state: Mutex<BudgetState>,
}

#[derive(Debug, Default)]
struct BudgetState {
    used: TokenUsage,
    reserved: u64,
    presumed: u64,
}

/// Tokens held for one in-flight request. [`Reservation::settle`] records what was billed;
/// dropping it unsettled (a cancelled or failed request) releases it with nothing billed.
#[derive(Debug)]
#[must_use = "settle the reservation with the reply's usage"]
pub struct Reservation {
    budget: Arc<TokenBudget>,
    tokens: u64,
    settled: bool,
}

impl Reservation {
    /// Releases the reservation and records what the provider billed.
    pub fn settle(mut self, billed: TokenUsage) {
        self.settled = true;
        let mut s = self.budget.lock();
        s.reserved = s.reserved.saturating_sub(self.tokens);
        s.used += billed;
    }

    /// The tokens reserved.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut s = self.budget.lock();
            s.reserved = s.reserved.saturating_sub(self.tokens);
        }
    }
}

impl TokenBudget {
    /// A budget of `limit` tokens (input plus output); `None` is unlimited.
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            limit,
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reserves a request's worst case, or refuses it if that could exceed the budget.
    pub fn reserve(self: &Arc<Self>, worst_case: u64) -> Result<Reservation, LlmError> {
        let mut s = self.lock();
        if let Some(limit) = self.limit {
            let committed = s.used.total() + s.presumed + s.reserved;
            if committed + worst_case > limit {
                return Err(LlmError::BudgetExhausted {
                    used: s.used.total() + s.presumed,
                    budget: limit,
                    needed: worst_case,
                });
            }
        }
        s.reserved += worst_case;
        Ok(Reservation {
            budget: Arc::clone(self),
            tokens: worst_case,
            settled: false,
        })
    }

    /// Tokens used so far (exactly as the providers reported them).
    pub fn used(&self) -> TokenUsage {
        self.lock().used
    }

    /// Counts `tokens` of an attempt whose billing is unknown (it timed out) against the limit.
    pub fn presume(&self, tokens: u64) {
        let mut s = self.lock();
        s.presumed = s.presumed.saturating_add(tokens);
    }

    /// Tokens presumed spent by attempts that timed out.
    pub fn presumed(&self) -> u64 {
        self.lock().presumed
    }

    /// The limit, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_request_that_could_exceed() {
        let b = Arc::new(TokenBudget::new(Some(1000)));
        let r1 = b.reserve(600).expect("fits");
        assert!(matches!(
            b.reserve(500),
            Err(LlmError::BudgetExhausted { .. })
        ));
        r1.settle(TokenUsage {
            input: 100,
            output: 50,
        });
        let r2 = b.reserve(800).expect("fits after settling");
        r2.settle(TokenUsage {
            input: 700,
            output: 100,
        });
        assert_eq!(b.used().total(), 950);
        assert!(b.reserve(51).is_err());
        let r3 = b.reserve(50).expect("exactly fits");
        drop(r3);
        b.reserve(50)
            .expect("a dropped reservation is released")
            .settle(TokenUsage::default());
    }

    #[test]
    fn timed_out_attempts_count_against_the_limit_only() {
        let b = Arc::new(TokenBudget::new(Some(1000)));
        b.presume(700);
        assert_eq!(b.used(), TokenUsage::default());
        assert_eq!(b.presumed(), 700);
        match b.reserve(400) {
            Err(LlmError::BudgetExhausted { used, .. }) => assert_eq!(used, 700),
            other => panic!("expected a refusal, got {other:?}"),
        }
        b.reserve(300).expect("fits").settle(TokenUsage::default());
    }

    #[test]
    fn unlimited_budget_counts() {
        let b = Arc::new(TokenBudget::new(None));
        let r = b.reserve(u64::MAX / 4).expect("no limit");
        r.settle(TokenUsage {
            input: 3,
            output: 4,
        });
        assert_eq!(
            b.used(),
            TokenUsage {
                input: 3,
                output: 4
            }
        );
    }
}
