#!/usr/bin/env bun
/**
 * nvmesh: one executable, every role. `nvmesh target serve`, `nvmesh toma run`,
 * `nvmesh client attach`, the admin commands, and `nvmesh demo`.
 */
import { clientCommand } from "./client.ts";
import { clusterCommand } from "./cluster.ts";
import { command, runCli } from "./command.ts";
import { demoCommand } from "./demo.ts";
import { driveCommand } from "./drive.ts";
import { targetCommand } from "./target.ts";
import { tomaCommand } from "./toma.ts";
import { volumeCommand } from "./volume.ts";
import { VERSION } from "./version.ts";

const main = command({
  meta: { name: "nvmesh", description: `software-defined distributed NVMe block storage (v${VERSION})` },
  subCommands: {
    drive: driveCommand,
    target: targetCommand,
    toma: tomaCommand,
    volume: volumeCommand,
    cluster: clusterCommand,
    client: clientCommand,
    demo: demoCommand,
    forensics: () => import("./forensics.ts").then((m) => m.forensicsCommand),
    verify: () => import("./verify.ts").then((m) => m.verifyCommand),
  },
});

await runCli(main, process.argv.slice(2), VERSION);
