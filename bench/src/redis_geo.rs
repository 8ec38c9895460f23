//! The Redis GEO baseline: the same pilots in one GEO set, moved with `GEOADD` and searched
//! with `GEOSEARCH … BYRADIUS 2000 m ASC COUNT 20`, each one command per round trip, as a
//! Redis-GEO dispatch design does. Redis's own time per call comes from
//! `INFO commandstats` (reset before each measured phase), so network and client costs do
//! not flatter the comparison.

use redis::{Commands as _, Connection};

pub struct RedisGeo {
    connection: Connection,
    pub key: String,
}

/// Server-side cost of one command type, from `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerTime {
    pub calls: u64,
    pub usec_per_call: f64,
}

impl RedisGeo {
    pub fn connect(url: &str, key: &str) -> redis::RedisResult<Self> {
        let connection = redis::Client::open(url)?.get_connection()?;
        let mut geo = Self { connection, key: key.to_owned() };
        let _: () = geo.connection.del(&geo.key)?;
        Ok(geo)
    }

    /// Loads positions (lng, lat order per GEOADD) in pipelined chunks; not measured.
    pub fn load(&mut self, members: &[(String, f64, f64)]) -> redis::RedisResult<()> {
        for chunk in members.chunks(10_000) {
            let mut command = redis::cmd("GEOADD");
            command.arg(&self.key);
            for (member, lat, lng) in chunk {
                command.arg(*lng).arg(*lat).arg(member);
            }
            let _: i64 = command.query(&mut self.connection)?;
        }
        Ok(())
    }

    pub fn geoadd(&mut self, member: &str, lat: f64, lng: f64) -> redis::RedisResult<()> {
        let _: i64 = redis::cmd("GEOADD").arg(&self.key).arg(lng).arg(lat).arg(member).query(&mut self.connection)?;
        Ok(())
    }

    /// The 20 nearest members within `radius_m`, nearest first.
    pub fn geosearch(&mut self, lat: f64, lng: f64, radius_m: f64, count: usize) -> redis::RedisResult<Vec<String>> {
        redis::cmd("GEOSEARCH")
            .arg(&self.key)
            .arg("FROMLONLAT")
            .arg(lng)
            .arg(lat)
            .arg("BYRADIUS")
            .arg(radius_m)
            .arg("m")
            .arg("ASC")
            .arg("COUNT")
            .arg(count)
            .query(&mut self.connection)
    }

    pub fn reset_stats(&mut self) -> redis::RedisResult<()> {
        redis::cmd("CONFIG").arg("RESETSTAT").query(&mut self.connection)
    }

    /// Redis's own time for `command` (lower case, e.g. "geoadd") since the last reset.
    pub fn server_time(&mut self, command: &str) -> redis::RedisResult<ServerTime> {
        let info: String = redis::cmd("INFO").arg("commandstats").query(&mut self.connection)?;
        Ok(parse_commandstats(&info, command))
    }

    pub fn clear(&mut self) -> redis::RedisResult<()> {
        self.connection.del(&self.key)
    }
}

/// Finds `cmdstat_<command>:calls=N,usec=U,usec_per_call=X,...` in INFO output.
pub fn parse_commandstats(info: &str, command: &str) -> ServerTime {
    let prefix = format!("cmdstat_{command}:");
    let Some(line) = info.lines().find(|line| line.starts_with(&prefix)) else {
        return ServerTime::default();
    };
    let field = |name: &str| {
        line[prefix.len()..]
            .split(',')
            .find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
            .and_then(|value| value.parse::<f64>().ok())
    };
    ServerTime { calls: field("calls").unwrap_or(0.0) as u64, usec_per_call: field("usec_per_call").unwrap_or(0.0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_commandstats_lines() {
        let info = "# Commandstats\r\ncmdstat_geosearch:calls=2000,usec=31234,usec_per_call=15.62,rejected_calls=0,failed_calls=0\r\ncmdstat_geoadd:calls=5,usec=10,usec_per_call=2.00\r\n";
        let search = parse_commandstats(info, "geosearch");
        assert_eq!((search.calls, search.usec_per_call), (2000, 15.62));
        assert_eq!(parse_commandstats(info, "geoadd").calls, 5);
        assert_eq!(parse_commandstats(info, "get").calls, 0);
    }
}
