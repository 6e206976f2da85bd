//! The billing clock of an Exclusive session (R1, R8): billing runs from launch to stop,
//! accrues per second, and is settled once per hour, each hour pre-authorised before it
//! starts; an instance with auto-shutdown on stops after its idle timeout. Given what was
//! settled and the last busy heartbeat, `next_step` says what is due at `now_ms`, so a
//! sidecar that looks late (after a restart, or a slow tick) settles exactly what a
//! punctual one would have.

/// Twenty minutes without a busy heartbeat stops an instance with auto-shutdown on (R8).
pub const DEFAULT_IDLE_TIMEOUT_MS: i64 = 20 * 60 * 1000;
/// One billing cycle.
pub const HOUR_MS: i64 = 3_600_000;
/// Charges accrue per whole second.
pub const ACCRUAL_STEP_MS: i64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTerms {
    pub started_at_ms: i64,
    pub auto_shutdown: bool,
    pub idle_timeout_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionStep {
    /// The hour ending at `hour_end_ms` is over: charge it, pre-authorise the next.
    SettleHour { hour_end_ms: i64 },
    /// Idle for the timeout: stop at `at_ms` and charge up to it.
    StopIdle { at_ms: i64 },
    /// Nothing due before `now_ms`.
    Wait,
}

impl SessionTerms {
    /// When auto-shutdown stops the instance if no busy heartbeat comes first.
    pub fn idle_deadline_ms(&self, last_busy_at_ms: i64) -> Option<i64> {
        self.auto_shutdown
            .then(|| last_busy_at_ms.saturating_add(self.idle_timeout_ms))
    }

    /// What is due at `now_ms` for a session settled up to `billed_until_ms`. An idle stop
    /// that falls within (or at the end of) the current hour comes before the hour.
    pub fn next_step(
        &self,
        billed_until_ms: i64,
        last_busy_at_ms: i64,
        now_ms: i64,
    ) -> SessionStep {
        let hour_end_ms = billed_until_ms.saturating_add(HOUR_MS);
        if let Some(deadline) = self.idle_deadline_ms(last_busy_at_ms) {
            let at_ms = deadline.max(billed_until_ms);
            if at_ms <= now_ms && at_ms <= hour_end_ms {
                return SessionStep::StopIdle { at_ms };
            }
        }
        if hour_end_ms <= now_ms {
            return SessionStep::SettleHour { hour_end_ms };
        }
        SessionStep::Wait
    }
}

/// The billable part of `[from_ms, to_ms)`: whole seconds (a started second is free).
pub fn billable_ms(from_ms: i64, to_ms: i64) -> u64 {
    let span = to_ms.saturating_sub(from_ms).max(0);
    (span - span % ACCRUAL_STEP_MS) as u64
}

/// Whether charges accrue while nothing runs (R10): auto-shutdown is off, or the instance
/// has been idle since its last busy heartbeat.
pub fn accrues_without_activity(terms: &SessionTerms, last_busy_at_ms: i64, now_ms: i64) -> bool {
    !terms.auto_shutdown || now_ms > last_busy_at_ms
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn terms(auto: bool) -> SessionTerms {
        SessionTerms {
            started_at_ms: 0,
            auto_shutdown: auto,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
        }
    }

    /// Steps a session to `now` with busy heartbeats at `busy`, as a late sidecar would.
    fn replay(t: &SessionTerms, busy: &[i64], now: i64) -> (Vec<SessionStep>, i64) {
        let mut billed = t.started_at_ms;
        let mut steps = Vec::new();
        let last_busy = busy
            .iter()
            .copied()
            .filter(|b| *b <= now)
            .max()
            .unwrap_or(0);
        loop {
            match t.next_step(billed, last_busy, now) {
                SessionStep::Wait => return (steps, billed),
                s @ SessionStep::SettleHour { hour_end_ms } => {
                    steps.push(s);
                    billed = hour_end_ms;
                }
                s @ SessionStep::StopIdle { .. } => {
                    steps.push(s);
                    return (steps, billed);
                }
            }
        }
    }

    #[test]
    fn three_hours_ten_minutes_busy_settles_three_hours() {
        let t = terms(true);
        let busy: Vec<i64> = (0..=190).map(|m| m * MIN).collect();
        let (steps, billed) = replay(&t, &busy, 190 * MIN);
        assert_eq!(
            steps,
            (1..=3)
                .map(|h| SessionStep::SettleHour {
                    hour_end_ms: h * HOUR_MS
                })
                .collect::<Vec<_>>()
        );
        assert_eq!(billable_ms(billed, 190 * MIN), (10 * MIN) as u64);
    }

    #[test]
    fn idle_twenty_minutes_stops_at_the_deadline() {
        let t = terms(true);
        let (steps, _) = replay(&t, &[0, 5 * MIN], 2 * HOUR_MS);
        assert_eq!(steps, vec![SessionStep::StopIdle { at_ms: 25 * MIN }]);
        assert_eq!(t.next_step(0, 5 * MIN, 25 * MIN - 1), SessionStep::Wait);
    }

    #[test]
    fn idle_stop_after_an_hour_settles_the_hour_first() {
        let t = terms(true);
        let (steps, _) = replay(&t, &[0, 50 * MIN], 3 * HOUR_MS);
        assert_eq!(
            steps,
            vec![
                SessionStep::SettleHour {
                    hour_end_ms: HOUR_MS
                },
                SessionStep::StopIdle { at_ms: 70 * MIN }
            ]
        );
    }

    #[test]
    fn idle_deadline_on_the_hour_stops_without_a_next_hour() {
        let t = terms(true);
        assert_eq!(
            t.next_step(0, 40 * MIN, HOUR_MS),
            SessionStep::StopIdle { at_ms: HOUR_MS }
        );
    }

    #[test]
    fn without_auto_shutdown_it_runs_and_accrues_idle() {
        let t = terms(false);
        let (steps, billed) = replay(&t, &[0], 2 * HOUR_MS);
        assert_eq!(steps.len(), 2);
        assert_eq!(billed, 2 * HOUR_MS);
        assert!(accrues_without_activity(&t, 0, 2 * HOUR_MS));
        assert!(!accrues_without_activity(&terms(true), 10, 10));
    }

    #[test]
    fn only_whole_seconds_are_billable() {
        assert_eq!(billable_ms(0, 1_999), 1_000);
        assert_eq!(billable_ms(0, 999), 0);
        assert_eq!(billable_ms(5, 1), 0);
    }
}
