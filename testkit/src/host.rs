//! The host's snapshot as the tests and models run it — core's [`PreCopy`] around a copy the
//! caller makes — and its broken twin without the post check.

use shmsnap_core::{retain, Descriptor, PreCopy, Region, RetainError, Retained, WordMemory};

/// Which host runs the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// The real sandwich: [`PreCopy::read`], the copy, [`PreCopy::finish`].
    Sound,
    /// Broken twin: the real `finish` runs (fence, `post`, `next_seq`) on a scratch copy, but
    /// the image is retained with `pre` passed as `post` — no post check. Models must catch it.
    PreAsPost,
}

/// The outcome of one host snapshot.
#[derive(Debug)]
pub struct HostSnapshot {
    /// The copied image after `retain`.
    pub image: Vec<u8>,
    /// Descriptors read before the copy, by slot.
    pub pre: Vec<Descriptor>,
    /// Descriptors read after the copy, by slot (really read, even by the broken host).
    pub post: Vec<Descriptor>,
    /// What `retain` kept.
    pub retained: Retained,
}

/// One host snapshot of `region`: `pre`, then `copy()` (which returns the whole image, and may
/// run instrumentation first), then `finish` — or its broken twin.
///
/// # Errors
///
/// As [`PreCopy::read`] and [`PreCopy::finish`].
pub fn host_snapshot<M: WordMemory + ?Sized>(
    region: &Region<'_, M>,
    host: Host,
    copy: impl FnOnce() -> Vec<u8>,
) -> Result<HostSnapshot, RetainError> {
    let e = region.layout().entries as usize;
    let mut pre_buf = vec![Descriptor::EMPTY; e];
    let mut post_buf = vec![Descriptor::EMPTY; e];
    let token = PreCopy::read(region, &mut pre_buf, &mut post_buf)?;
    let layout = *token.layout();
    let pre = token.pre().slots().to_vec();
    let mut image = copy();
    let retained = match host {
        Host::Sound => token.finish(&mut image)?,
        Host::PreAsPost => {
            let real = token.finish(&mut image.clone())?;
            retain(&mut image, &layout, &pre, &pre, real.live_next_seq)?
        }
    };
    Ok(HostSnapshot {
        image,
        pre,
        post: post_buf,
        retained,
    })
}
