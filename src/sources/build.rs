//! Which source a validated `[[source]]` names, opened: the one place that knows every
//! kind.

use super::db::Database;
use super::Source;
use crate::config::source::Location;

/// Builds the source for a validated config.
pub fn open(config: &crate::config::SourceConfig) -> Box<dyn Source> {
    use crate::config::SourceDetail;
    let location = &config.location;
    match &config.detail {
        SourceDetail::Dbos => Box::new(super::dbos::DbosSource::new(Database::open(location))),
        SourceDetail::QueueTable(layout) => Box::new(super::queue_table::QueueTableSource::new(
            Database::open(location),
            (**layout).clone(),
        )),
        SourceDetail::Jsonl(layout) => {
            let Location::File(path) = location else {
                unreachable!("config gives jsonl sources a file")
            };
            Box::new(super::jsonl::JsonlSource::new(path.clone(), layout.clone()))
        }
        SourceDetail::Sql {
            query,
            labels,
            values,
        } => Box::new(super::sql::SqlSource::new(
            Database::open(location),
            query.clone(),
            labels.clone(),
            values.clone(),
        )),
    }
}
