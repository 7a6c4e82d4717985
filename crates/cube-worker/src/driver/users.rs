//! Which host user a process task runs as.
//!
//! A worker running as root runs each process task as its spec's `user` (which the worker must
//! allow, `--allow-user`) or else as an unprivileged default (`nobody`, `--process-user`), so a
//! task submitted through the API is not root on the host. A worker that is not root cannot
//! switch users: it runs every task as itself, says so once in its log, and refuses a task
//! naming another user rather than run it as the wrong one.
//!
//! Users are looked up in `/etc/passwd` (the accounts of the host itself; NSS sources such as
//! LDAP are not consulted), read again at each start so an account added later is found.

use super::DriverError;

/// The accounts database read.
const PASSWD: &str = "/etc/passwd";

/// A host account a task runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Account {
    /// Its name (or the uid as written, for a uid without an entry).
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory (`HOME` of the task), `/` when unknown.
    pub home: String,
}

/// How the worker picks the user of a process task.
#[derive(Clone, Debug)]
pub(crate) enum RunAs {
    /// The worker is root: each task as its spec's user, or this default.
    Switch {
        /// The default user's name.
        default: String,
    },
    /// The worker is not root: every task as the worker's own user.
    Worker {
        /// The worker's effective uid.
        uid: u32,
    },
}

impl RunAs {
    /// Decides for this process: root switches to `default`, which must exist (checked now, so
    /// a worker on a host without it fails at start rather than at its first task); anyone
    /// else runs tasks as itself, which is logged once, here.
    pub(crate) fn for_this_process(default: &str) -> Result<Self, DriverError> {
        let euid = rustix::process::geteuid();
        if !euid.is_root() {
            let uid = euid.as_raw();
            tracing::warn!(
                uid,
                "the worker does not run as root, so it cannot switch users: process tasks run as the worker's own user"
            );
            return Ok(RunAs::Worker { uid });
        }
        let passwd = read_passwd()?;
        if lookup(&passwd, default).is_none() {
            return Err(DriverError::User {
                user: default.to_owned(),
                why: "no such user in /etc/passwd (create it, or name another with --process-user)",
            });
        }
        tracing::info!(
            user = default,
            "process tasks run as this user unless their spec names an allowed one"
        );
        Ok(RunAs::Switch { default: default.to_owned() })
    }

    /// The user the process driver is off with: nothing to decide, nothing to log.
    pub(crate) fn unused() -> Self {
        RunAs::Worker { uid: rustix::process::geteuid().as_raw() }
    }

    /// The default user's name, when the worker switches users.
    pub(crate) fn default_user(&self) -> Option<&str> {
        match self {
            RunAs::Switch { default } => Some(default),
            RunAs::Worker { .. } => None,
        }
    }

    /// The account a task naming `user` (or none) runs as; `None`: as the worker itself.
    pub(crate) async fn account(&self, user: Option<&str>) -> Result<Option<Account>, DriverError> {
        match self {
            RunAs::Switch { default } => {
                let name = user.unwrap_or(default);
                let passwd = read_passwd_async().await?;
                match lookup(&passwd, name) {
                    Some(account) => Ok(Some(account)),
                    None => Err(DriverError::User {
                        user: name.to_owned(),
                        why: "no such user in /etc/passwd",
                    }),
                }
            }
            RunAs::Worker { uid } => {
                let Some(name) = user else { return Ok(None) };
                let passwd = read_passwd_async().await?;
                match lookup(&passwd, name) {
                    Some(account) if account.uid == *uid => Ok(None),
                    Some(_) => Err(DriverError::User {
                        user: name.to_owned(),
                        why: "the worker does not run as root, so it cannot switch to another user",
                    }),
                    None => Err(DriverError::User {
                        user: name.to_owned(),
                        why: "no such user in /etc/passwd",
                    }),
                }
            }
        }
    }
}

fn read_passwd() -> Result<String, DriverError> {
    std::fs::read_to_string(PASSWD)
        .map_err(|source| DriverError::File { path: PASSWD.into(), source })
}

async fn read_passwd_async() -> Result<String, DriverError> {
    tokio::fs::read_to_string(PASSWD)
        .await
        .map_err(|source| DriverError::File { path: PASSWD.into(), source })
}

/// Finds `user` (a name, or a uid in digits) in the text of a passwd file. A uid without an
/// entry still names an account: its group is the uid and its home `/`.
fn lookup(passwd: &str, user: &str) -> Option<Account> {
    let uid: Option<u32> = user.parse().ok();
    let found = passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let entry_uid: u32 = fields.next()?.parse().ok()?;
        let gid: u32 = fields.next()?.parse().ok()?;
        let _gecos = fields.next()?;
        let home = fields.next().filter(|h| !h.is_empty()).unwrap_or("/");
        let matches = if uid.is_some() { uid == Some(entry_uid) } else { name == user };
        matches.then(|| Account {
            name: name.to_owned(),
            uid: entry_uid,
            gid,
            home: home.to_owned(),
        })
    });
    found.or_else(|| {
        uid.map(|uid| Account { name: user.to_owned(), uid, gid: uid, home: "/".to_owned() })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          # a comment\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
                          app:x:1000:1001::/home/app:/bin/sh\n";

    #[test]
    fn users_are_found_by_name_or_uid() {
        let nobody = lookup(PASSWD, "nobody").unwrap();
        assert_eq!((nobody.uid, nobody.gid, nobody.home.as_str()), (65534, 65534, "/nonexistent"));
        let app = lookup(PASSWD, "1000").unwrap();
        assert_eq!((app.name.as_str(), app.gid), ("app", 1001));
        assert_eq!(lookup(PASSWD, "ghost"), None);
        let bare = lookup(PASSWD, "4242").unwrap();
        assert_eq!((bare.uid, bare.gid, bare.home.as_str()), (4242, 4242, "/"));
    }
}
