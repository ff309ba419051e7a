//! The data of one plugin instance's `Store`: its WASI context, grants, limits and the
//! buffers of the current call.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use crate::guest_text::GuestText;
use crate::http_policy::HostAllowList;
use crate::log_budget::LogBudget;
use crate::log_stream::LogStream;
use crate::outbound::OutboundPool;
use crate::stage::{StageContext, StateReader};
use crate::stdout_cap::CappedStdout;

/// Component instances, tables and memories one plugin instance may create. A wasm32-wasip2
/// Rust guest needs a handful; the caps stop a component from multiplying them.
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 16;
/// Table elements per table (function pointers), against table-growth bombs.
const MAX_TABLE_ELEMENTS: usize = 1_000_000;

/// Everything a running plugin instance owns on the host side.
pub struct PluginState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
    allow_list: HostAllowList,
    pub(crate) host: HostState,
}

/// What our `host` interface needs.
pub(crate) struct HostState {
    pub(crate) pipeline: Arc<str>,
    pub(crate) stage: Arc<str>,
    pub(crate) secrets: Arc<Vec<(String, String)>>,
    /// Granted directories: (path the guest uses, host path).
    pub(crate) dirs: Vec<(String, PathBuf)>,
    pub(crate) state: Arc<dyn StateReader>,
    /// State writes of the current call: key → new value (`None` deletes).
    pub(crate) pending: BTreeMap<String, Option<Vec<u8>>>,
    /// Log lines written in the current call.
    pub(crate) log_lines: u32,
    /// The stage's log budget (dropped lines are counted there).
    pub(crate) log: LogBudget,
    /// Cleans what the plugin logs.
    pub(crate) text: GuestText,
    /// The server's `control` side; `None` when the run has none (a dry run).
    pub(crate) control: Option<Arc<dyn crate::control::ControlPlane>>,
    /// What of `control` the pipeline grants this stage.
    pub(crate) control_grant: tocsin_config::spec::ControlGrant,
    /// Control calls made in the current call.
    pub(crate) control_calls: u32,
}

impl PluginState {
    /// Builds the state for a fresh instance of the stage `ctx`: WASI with nothing but the
    /// granted directories (and stdout when granted), the memory cap, the HTTP allow-list.
    pub(crate) fn new(
        ctx: &StageContext,
        outbound: Arc<OutboundPool>,
        log: LogBudget,
        text: GuestText,
        stdout: CappedStdout,
    ) -> wasmtime::Result<Self> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stderr(LogStream::new(
            &ctx.pipeline,
            &ctx.stage,
            log.clone(),
            text.clone(),
        ));
        if ctx.grants.stdout {
            match &ctx.dry_run {
                Some(recorder) => {
                    wasi.stdout(recorder.stdout_pipe());
                }
                None => {
                    wasi.stdout(stdout);
                }
            }
        }
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        for dir in &ctx.grants.read_dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadOnly)?;
        }
        for dir in &ctx.grants.write_dirs {
            wasi.preopened_dir(&dir.host, &dir.guest, FsPerms::ReadWrite)?;
        }
        let limits = StoreLimitsBuilder::new()
            .memory_size(ctx.limits.memory as usize)
            .table_elements(MAX_TABLE_ELEMENTS)
            .instances(MAX_INSTANCES)
            .tables(MAX_TABLES)
            .memories(MAX_MEMORIES)
            .trap_on_grow_failure(true)
            .build();
        let dirs = ctx
            .grants
            .read_dirs
            .iter()
            .chain(&ctx.grants.write_dirs)
            .map(|d| (d.guest.clone(), d.host.clone()))
            .collect();
        Ok(PluginState {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            limits,
            allow_list: HostAllowList {
                grants: HostAllowList::parse_grants(&ctx.grants.hosts),
                who: format!("{}/{}", ctx.pipeline, ctx.stage),
                recorder: ctx.dry_run.clone(),
                outbound,
                log: log.clone(),
            },
            host: HostState {
                pipeline: ctx.pipeline.as_str().into(),
                stage: ctx.stage.as_str().into(),
                secrets: ctx.secrets.clone(),
                dirs,
                state: ctx.state.clone(),
                pending: BTreeMap::new(),
                log_lines: 0,
                log,
                text,
                control: ctx.control.clone(),
                control_grant: ctx.grants.control.clone(),
                control_calls: 0,
            },
        })
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for PluginState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.allow_list,
        }
    }
}
