// The official E2B JavaScript SDK against stockade: create, commands.run,
// files.write/read, kill. E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY
// point it at stockade (docs/e2b.md); prints one JSON line of results.
import { Sandbox, CommandExitError } from 'e2b'

const out = {}
const sbx = await Sandbox.create()
out.sandboxId = sbx.sandboxId
const r = await sbx.commands.run('echo hello-$((6*7)); echo oops >&2')
out.stdout = r.stdout
out.stderr = r.stderr
out.exitCode = r.exitCode
try {
  await sbx.commands.run('exit 3')
  out.failure = 'no error'
} catch (e) {
  out.failure = e instanceof CommandExitError ? `exit ${e.exitCode}` : String(e)
}
await sbx.files.write('/tmp/js.txt', 'written by js\n')
out.read = await sbx.files.read('/tmp/js.txt')
const listed = await Sandbox.list().nextItems()
out.listed = listed.some((s) => s.sandboxId === sbx.sandboxId)
out.killed = await sbx.kill()
out.killedAgain = await Sandbox.kill(sbx.sandboxId)
console.log(JSON.stringify(out))
