//! Freeze detection: the pure decision ([`detector`], [`reference`], [`downtime`]), the
//! event type ([`event`]), the reference clock readers ([`references`]), the host
//! evidence readers ([`evidence`]) and the thread that feeds real clocks to the decision
//! ([`runner`]).

pub mod detector;
pub mod downtime;
pub mod event;
pub mod evidence;
pub mod forward_step;
pub mod reference;
pub mod references;
pub mod visibility;

pub use event::{ChannelEstimate, FreezeEvent, FreezeKind};
