//! The shard's one runtime timer: sleeps until the wheel's next deadline and marks the
//! connections whose deadlines passed. Every timed thing in a shard goes through the wheel; no
//! runtime timer exists per connection or per message.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use super::state::Shard;

/// The shard's timer task: sleeps until the wheel's next deadline (one runtime timer per shard)
/// and marks the connections whose deadlines passed. Woken early when a sooner deadline is armed.
pub(crate) async fn run_timer(shard: Rc<Shard>) {
    let mut sleep: Option<(Instant, glommio::timer::Timer)> = None;
    std::future::poll_fn(|cx| {
        loop {
            shard.set_timer_waker(cx.waker());
            let now = Instant::now();
            let Some(next) = shard.expire_timers(now) else {
                sleep = None;
                return Poll::Pending;
            };
            if next <= now {
                continue;
            }
            if sleep.as_ref().is_none_or(|(at, _)| *at != next) {
                sleep = Some((next, glommio::timer::Timer::new(next - now)));
            }
            let Some((_, timer)) = sleep.as_mut() else {
                return Poll::Pending;
            };
            match Pin::new(timer).poll(cx) {
                Poll::Ready(_) => sleep = None,
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await
}
