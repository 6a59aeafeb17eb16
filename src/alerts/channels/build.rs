//! Which channel a validated `[[channel]]` names, made: the one place that knows every
//! service.

use super::Channel;
use crate::config::channel::{ChannelConfig, ChannelDetail};

/// The channel a validated `[[channel]]` table describes.
pub fn channel(config: &ChannelConfig) -> Box<dyn Channel> {
    let name = config.name.clone();
    let url = config.url.clone();
    match &config.detail {
        ChannelDetail::Webhook { secret } => {
            Box::new(super::webhook::Webhook::new(name, url, secret.clone()))
        }
        ChannelDetail::Ntfy {
            token,
            priority,
            tags,
        } => Box::new(super::ntfy::Ntfy::new(
            name,
            url,
            token.clone(),
            *priority,
            tags.clone(),
        )),
        ChannelDetail::Slack => Box::new(super::slack::webhook(name, url)),
        ChannelDetail::Discord => Box::new(super::discord::webhook(name, url)),
        ChannelDetail::Telegram { token, chat_id } => Box::new(super::telegram::Telegram::new(
            name,
            url,
            token.clone(),
            chat_id.clone(),
        )),
        ChannelDetail::Pushover {
            token,
            user,
            priority,
        } => Box::new(super::pushover::Pushover::new(
            name,
            url,
            token.clone(),
            user.clone(),
            *priority,
        )),
        ChannelDetail::Pagerduty { routing_key } => Box::new(super::pagerduty::Pagerduty::new(
            name,
            url,
            routing_key.clone(),
        )),
        ChannelDetail::Alertmanager => Box::new(super::alertmanager::Alertmanager::new(name, url)),
    }
}
