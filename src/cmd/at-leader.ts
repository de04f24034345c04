/**
 * Requests that run on the leader of a TOMA cluster (membership changes, volume creation and
 * deletion): a TOMA that is not the leader answers 421 naming it, and the request goes there (a
 * few hops at most: leadership may move while we ask). A single TOMA never answers 421.
 *
 * Not the daemons' homedCall (toma/homing.ts), on purpose: that one moves on to the next TOMA when
 * one does not answer or has no leader (503), and sends the call again there. Right for a
 * daemon's watches and reports; wrong for an operator's command, which may have been committed by
 * a leader that then timed out (a create sent again answers "name taken", a server added twice),
 * and whose 503 the operator should see. Here only a 421, which changed nothing, is followed.
 */
import { consola } from "consola";
import { TomaApiError, type TomaClient, tomaClient } from "../toma/api-client.ts";
import { managementAddress } from "./args.ts";
import { clusterKey } from "./key-file.ts";

export async function atLeader<T>(args: { management?: string; "key-file"?: string }, op: (t: TomaClient) => Promise<T>, timeout_ms = 30_000): Promise<T> {
  let address = managementAddress(args.management);
  const key = clusterKey(args["key-file"]);
  for (let hop = 0; ; hop++) {
    try {
      return await op(tomaClient(address, { key, timeout_ms }));
    } catch (e) {
      if (!(e instanceof TomaApiError) || e.status !== 421 || !e.leader || hop >= 3) throw e;
      consola.info(`${address} is not the leader; asking the leader at ${e.leader}`);
      address = e.leader;
    }
  }
}
