//! How much time one request asks for.
//!
//! A request normally asks for everything from the checkpoint on (`starttime` only). After a
//! backlog (a long outage, a large `first_poll_lookback_secs`) that answer can exceed
//! `max_response_bytes` or `request_timeout_ms`, and asking again from the same checkpoint
//! would fail the same way for ever: the source would never move. So such a failure bounds the
//! next requests to a window `starttime..=endtime`, halving its span at each further failure
//! down to [`MIN_SPAN_MS`]; an answer that used less than a quarter of the byte limit doubles
//! it again. A window never reaches into the last [`OPEN_END_MARGIN_MS`]: one that would is
//! asked for open-ended instead, and an open-ended answer ends the windowing.
//!
//! A window's answer moves the cursor as any answer does (to the latest event taken, since the
//! appliance may cap the events per answer); only an answer with nothing new moves it to the
//! window's end.

/// The narrowest window: one second of events that still exceeds the limits needs the
/// operator (a larger `max_response_bytes` or `request_timeout_ms`).
pub const MIN_SPAN_MS: i64 = 1000;

/// A window never ends this close to now: the appliance may still be indexing events of the
/// last minutes, and a cursor moved past them would skip them. Also absorbs clock skew
/// between this host and the appliance (which the API itself refuses beyond minutes).
pub const OPEN_END_MARGIN_MS: i64 = 5 * 60 * 1000;

/// An endpoint's request window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// `None`: open-ended requests (nothing has failed as too large or too slow yet).
    span_ms: Option<i64>,
}

impl Window {
    /// `endtime` of a request starting at `start` at time `now` (epoch ms); `None`: ask for
    /// everything from `start` on.
    pub fn end(&self, start: i64, now: i64) -> Option<i64> {
        // A window that would end in the last minutes is not clipped to their start: that
        // start moves on with the clock, and the cursor would chase it in ever smaller windows.
        let end = start.saturating_add(self.span_ms?);
        (end < now.saturating_sub(OPEN_END_MARGIN_MS)).then_some(end)
    }

    /// The request from `start` failed as too large or too slow: halve the span (the first
    /// time, half of what the open-ended request covered). Returns whether the next request
    /// from `start` asks for less than the failed one.
    pub fn narrow(&mut self, start: i64, now: i64) -> bool {
        let before = self.end(start, now);
        let covered = before.unwrap_or(now).saturating_sub(start);
        self.span_ms = Some((covered / 2).max(MIN_SPAN_MS));
        match (before, self.end(start, now)) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => new < old,
        }
    }

    /// A request's answer was `bytes` long with `limit` allowed; `bounded`: it had an
    /// `endtime`. A bounded answer that used less than a quarter widens the window, so a
    /// backlog that thins out is walked in few requests; an open-ended answer means the
    /// backlog is behind us.
    pub fn answered(&mut self, bounded: bool, bytes: usize, limit: usize) {
        if !bounded {
            self.span_ms = None;
        } else if let Some(span) = self.span_ms
            && bytes < limit / 4
        {
            self.span_ms = Some(span.saturating_mul(2));
        }
    }

    /// The current span, for the log; `None` while open-ended.
    pub fn span_ms(&self) -> Option<i64> {
        self.span_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    #[test]
    fn open_until_a_request_fails_then_halves_down_to_a_second() {
        let now = 100 * DAY;
        let start = now - 8 * DAY;
        let mut w = Window::default();
        assert_eq!(w.end(start, now), None);
        assert!(w.narrow(start, now));
        assert_eq!(w.end(start, now), Some(start + 4 * DAY));
        assert!(w.narrow(start, now));
        assert_eq!(w.end(start, now), Some(start + 2 * DAY));
        for _ in 0..40 {
            w.narrow(start, now);
        }
        assert_eq!(w.end(start, now), Some(start + MIN_SPAN_MS));
        assert!(!w.narrow(start, now), "nothing narrower than the minimum");
    }

    #[test]
    fn widens_after_small_answers_but_never_into_the_last_minutes() {
        let now = 100 * DAY;
        let start = now - 8 * DAY;
        let mut w = Window::default();
        w.narrow(start, now);
        w.narrow(start, now);
        w.answered(true, 300, 1000);
        assert_eq!(
            w.end(start, now),
            Some(start + 2 * DAY),
            "a quarter or more: kept"
        );
        w.answered(true, 249, 1000);
        assert_eq!(w.end(start, now), Some(start + 4 * DAY));
        w.answered(true, 0, 1000);
        let limit = now - OPEN_END_MARGIN_MS;
        assert_eq!(w.end(limit - 8 * DAY - 1, now), Some(limit - 1));
        assert_eq!(
            w.end(start, now),
            None,
            "a window reaching into the last minutes is asked for open-ended"
        );
        // An open-ended answer ends the windowing.
        w.answered(false, 0, 1000);
        assert_eq!(w, Window::default());
    }

    #[test]
    fn a_recent_checkpoint_cannot_be_narrowed() {
        let now = 100 * DAY;
        let start = now - 60_000;
        let mut w = Window::default();
        assert!(!w.narrow(start, now), "the last minutes are never cut off");
        assert_eq!(w.end(start, now), None);
    }
}
