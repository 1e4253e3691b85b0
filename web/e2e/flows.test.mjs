// End-to-end, in Debian's Chromium against a real `agently up`:
//  1. an approval: the run waits at an approval node; the inbox shows it with its context;
//     it is approved with a comment in the browser; the run goes on and the comment is in
//     its output;
//  2. bulk cancel: three waiting runs selected in the runs list and canceled at once;
//  3. the agent view: an agent (its LLM the scripted server of tests/integration, as a
//     process) calls a tool and spawns a sub-agent; the run page shows the tree, each LLM
//     call with its messages, tokens, cost and latency, the answer as it streams, the tool
//     call with its arguments, result and effect class, and the cost total;
//  4. a phone (390 × 844): no horizontal scroll on the runs list and a run's page;
//  5. the keyboard alone: sign in, the runs list, a run.
// Each test fails on any console error, uncaught exception, failed request or HTTP error
// answer in the browser (harness.mjs). Screenshots: $AGENTLY_E2E_ARTIFACTS.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { launchBrowser, screenshot, signIn, startAgently, startLlmServer, waitRun, watchedPage } from "./harness.mjs";

let agently, browser, llm;

before(async () => {
  agently = await startAgently();
  browser = await launchBrowser();
  llm = await startLlmServer();
});

after(async () => {
  await browser?.close();
  await llm?.stop();
  await agently?.stop();
});

const WAITER = {
  name: "e2e-waiter",
  nodes: [{ id: "hold", type: "wait_event", event: "never", timeout: "1h" }],
};

// A run of workflow `workflow` (one agent node, its LLM the scripted server) whose agent,
// asked to research `topic`, says `text` and proposes one http_request GET of `url` (tool
// call `callId`), gated for a person's approval; once the call ran it answers `answer`.
// Signs page in and opens the run's page; returns the run.
async function openGatedCall(page, { workflow, topic, text, callId, url, answer }) {
  await agently.api("PUT", "/v1/secrets/LLMKEY", { value: "sk-e2e-not-a-real-key" });
  await llm.script([
    {
      match: `Research ${topic}`,
      text,
      tool_calls: [{ id: callId, name: "http_request", arguments: JSON.stringify({ method: "GET", url }) }],
      usage: { input: 100, output: 10 },
    },
    { match: callId, text: answer, usage: { input: 150, output: 5 } },
  ]);
  await agently.api("POST", "/v1/workflows", {
    name: workflow,
    nodes: [
      {
        id: "think",
        type: "agent",
        agent: {
          provider: "openai",
          base_url: llm.url,
          model: "gpt-4o-mini",
          api_key_secret: "LLMKEY",
          prompt: "Research ${ input.topic }.",
          tools: ["http_request"],
          allowed_hosts: ["127.0.0.1"],
          approve_tools: ["http_request"],
        },
      },
    ],
  });
  await signIn(page, agently.base, agently.token);
  const run = await agently.api("POST", "/v1/runs", { workflow, input: { topic } });
  await page.goto(`${agently.base}/runs/${run.id}`);
  return run;
}

describe("the dashboard, further", () => {
  it("approves from the inbox with a comment, and the run goes on with it", { timeout: 180_000 }, async () => {
    await agently.api("POST", "/v1/workflows", {
      name: "e2e-approve",
      nodes: [
        { id: "draft", type: "transform", output: { refund: "${ input.amount }", customer: "ada" } },
        { id: "ok", type: "approval", after: ["draft"], title: "Refund ${ input.amount } EUR to ada?", timeout: "1h" },
        { id: "done", type: "transform", after: ["ok"], output: { comment: "${ nodes.ok.output.comment }", by: "${ nodes.ok.output.by }" } },
      ],
      output: "${ nodes.done.output }",
    });
    const run = await agently.api("POST", "/v1/runs", { workflow: "e2e-approve", input: { amount: 42 } });
    await waitRun(agently, run.id, /^waiting$/);

    const { context, page, problems } = await watchedPage(browser);
    try {
      await signIn(page, agently.base, agently.token);
      await page.getByRole("link", { name: "Inbox" }).click();
      const card = page.getByRole("region", { name: "approval Refund 42 EUR to ada?" });
      await card.waitFor();
      // its context: the output of the node before it
      const asked = JSON.parse(await card.getByLabel("what is asked").innerText());
      assert.deepEqual(asked.context.draft, { refund: 42, customer: "ada" });
      await screenshot(page, "10-inbox-approval");
      await card.getByLabel("comment").fill("fine, ada is a good customer");
      await card.getByRole("button", { name: "Approve" }).click();
      await card.waitFor({ state: "detached" });
      await page.getByText("Nothing waits for you.").waitFor();

      const done = await waitRun(agently, run.id, /^(completed|failed)$/);
      assert.equal(done.status, "completed");
      assert.equal(done.output.comment, "fine, ada is a good customer");
      assert.equal(done.output.by, "admin");

      // and the run's page shows it
      await page.goto(`${agently.base}/runs/${run.id}`);
      const output = page.getByLabel("run output");
      await output.waitFor();
      assert.equal(JSON.parse(await output.innerText()).comment, "fine, ada is a good customer");
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("cancels several runs at once from the runs list", { timeout: 120_000 }, async () => {
    await agently.api("POST", "/v1/workflows", WAITER);
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await agently.api("POST", "/v1/runs", { workflow: WAITER.name, input: {} })).id);
    for (const id of ids) await waitRun(agently, id, /^waiting$/);

    const { context, page, problems } = await watchedPage(browser);
    try {
      await signIn(page, agently.base, agently.token);
      await page.goto(`${agently.base}/runs?workflow=${WAITER.name}`);
      for (const id of ids) await page.getByLabel(`select run ${id}`).check();
      const button = page.getByRole("button", { name: "Cancel selected (3)" });
      await button.click();
      for (const id of ids) await page.locator(`tr[data-run="${id}"] .badge.s-canceled`).waitFor({ timeout: 30_000 });
      for (const id of ids) assert.equal((await agently.api("GET", `/v1/runs/${id}`)).status, "canceled");
      await page.getByRole("button", { name: "Cancel selected (0)" }).waitFor();
      await screenshot(page, "11-bulk-canceled");
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("shows an agent's LLM calls, its tool call and its sub-agent as a tree, live", { timeout: 360_000 }, async () => {
    await agently.api("PUT", "/v1/secrets/LLMKEY", { value: "sk-e2e-not-a-real-key" });
    const health = `${agently.base}/healthz`;
    await llm.script([
      // the root: a tool call first
      {
        match: "Research e2e",
        text: "I will check the service first.",
        tool_calls: [{ id: "HEALTH1", name: "http_request", arguments: JSON.stringify({ method: "GET", url: health }) }],
        usage: { input: 1200, output: 40 },
      },
      // then a sub-agent
      {
        match: "HEALTH1",
        text: "It is up. A helper will summarise.",
        tool_calls: [{ id: "SPAWN1", name: "spawn_agent", arguments: JSON.stringify({ prompt: "CHILD summarise the check" }) }],
        usage: { input: 1500, output: 30 },
      },
      // the sub-agent answers
      { match: "CHILD summarise", text: "CHILD-DONE: all good", usage: { input: 300, output: 10 } },
      // the root's answer streams slowly, so the page sees it form
      {
        match: "SPAWN1",
        text: "ROOT-ANSWER: the service is healthy and the helper agrees. ".repeat(3).trim(),
        usage: { input: 1800, output: 60, cached: 1000 },
        chunk: 6,
        interval_ms: 400, // about 12 s: long enough to be seen on a loaded machine
      },
    ]);
    await agently.api("POST", "/v1/workflows", {
      name: "e2e-agent",
      nodes: [
        {
          id: "think",
          type: "agent",
          agent: {
            provider: "openai",
            base_url: llm.url,
            model: "gpt-4o-mini",
            api_key_secret: "LLMKEY",
            system: "You call tools when asked.",
            prompt: "Research ${ input.topic } carefully.",
            tools: ["http_request", "spawn_agent"],
            allowed_hosts: ["127.0.0.1"],
            budget: { max_tokens: 100000, max_cost_usd: 5 },
          },
        },
      ],
    });
    const { context, page, problems } = await watchedPage(browser);
    try {
      await signIn(page, agently.base, agently.token);
      const run = await agently.api("POST", "/v1/runs", { workflow: "e2e-agent", input: { topic: "e2e" } });
      await page.goto(`${agently.base}/runs/${run.id}`);
      const view = page.getByRole("region", { name: "agents" });
      await view.waitFor({ timeout: 60_000 });
      // the answer forms live
      await view.getByTestId("streaming").getByText(/ROOT-ANSWER/).waitFor({ timeout: 120_000 });
      await screenshot(page, "12-agent-streaming");
      const done = await waitRun(agently, run.id, /^(completed|failed)$/, 120_000);
      assert.equal(done.status, "completed", JSON.stringify(done.error));

      const root = done.agents.find((a) => !a.parent_agent_run_id);
      const child = done.agents.find((a) => a.parent_agent_run_id === root.id);
      assert.ok(child, "the sub-agent's run");
      const rootItem = view.locator(`[data-agent-run="${root.id}"]`);
      // three LLM calls of the root with their answers, tokens, cost and latency
      await rootItem.locator('[data-llm-call="3"]').getByText(/ROOT-ANSWER/).first().waitFor({ timeout: 30_000 });
      const first = rootItem.locator('[data-llm-call="1"]').first();
      assert.match(await first.innerText(), /gpt-4o-mini · 1200 in \/ 40 out · \$\d+\.\d{4} · \d+(\.\d+)? m?s · tool_calls/);
      await first.getByText("messages sent").click();
      await first.getByText("Research e2e carefully.").waitFor();
      assert.match(await rootItem.locator('[data-llm-call="3"]').first().innerText(), /1800 in \(1000 cached\) \/ 60 out/);
      // the tool call: arguments, result, effect class
      const tool = rootItem.locator('[data-tool="http_request"]').first();
      await tool.locator(".effect-read_only").waitFor();
      assert.equal(JSON.parse(await tool.getByLabel("tool arguments").innerText()).url, health);
      assert.match(await tool.getByLabel("tool result").innerText(), /200/);
      // the sub-agent, nested under the root, with its own call
      const childItem = rootItem.locator(`[data-agent-run="${child.id}"][data-depth="1"]`);
      await childItem.waitFor();
      await childItem.getByRole("button", { name: /sub-agent/ }).first().waitFor();
      await childItem.getByText("CHILD-DONE: all good").first().waitFor();
      // the cost total: the run's, and the node's
      // the totals come from the run, read again (at most every 400 ms) after its events
      await view.getByTestId("agent-cost-think").filter({ hasText: /2 agent runs · 4 LLM calls/ }).waitFor({ timeout: 10_000 });
      assert.ok(done.cost_usd > 0, "a known price");
      assert.match(await view.getByRole("heading", { name: /Agents/ }).innerText(), new RegExp(`\\$${done.cost_usd.toFixed(4).replace(".", "\\.")} in all`));
      await screenshot(page, "13-agent-view");
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("answers an agent's question from the inbox, and the agent goes on with the answer", { timeout: 180_000 }, async () => {
    await agently.api("PUT", "/v1/secrets/LLMKEY", { value: "sk-e2e-not-a-real-key" });
    await llm.script([
      {
        match: "Research colours",
        tool_calls: [{ id: "ASK1", name: "ask_human", arguments: JSON.stringify({ question: "Which colour should the report use?" }) }],
        usage: { input: 100, output: 10 },
      },
      { match: "teal-green", text: "COLOUR: teal-green", usage: { input: 150, output: 5 } },
    ]);
    await agently.api("POST", "/v1/workflows", {
      name: "e2e-ask",
      nodes: [
        {
          id: "think",
          type: "agent",
          agent: { provider: "openai", base_url: llm.url, model: "gpt-4o-mini", api_key_secret: "LLMKEY", prompt: "Research ${ input.topic }.", tools: ["ask_human"] },
        },
      ],
    });
    const run = await agently.api("POST", "/v1/runs", { workflow: "e2e-ask", input: { topic: "colours" } });
    await waitRun(agently, run.id, /^needs_input$/, 60_000);
    const { context, page, problems } = await watchedPage(browser);
    try {
      await signIn(page, agently.base, agently.token);
      await page.getByRole("link", { name: "Inbox" }).click();
      const form = page.getByRole("form", { name: "answer the agent's question" });
      await form.getByText("Which colour should the report use?").waitFor();
      await screenshot(page, "17-inbox-question");
      await form.getByLabel("answer").fill("teal-green");
      await form.getByRole("button", { name: "Answer" }).click();
      await page.getByText("Nothing waits for you.").waitFor({ timeout: 30_000 });
      const done = await waitRun(agently, run.id, /^(completed|failed)$/, 60_000);
      assert.equal(done.status, "completed", JSON.stringify(done.error));
      assert.equal(done.output.think, "COLOUR: teal-green");
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("approves an agent's gated tool call on the run's page, and the agent view shows who did", { timeout: 240_000 }, async () => {
    const health = `${agently.base}/healthz`;
    const { context, page, problems } = await watchedPage(browser);
    try {
      const run = await openGatedCall(page, { workflow: "e2e-gate", topic: "gates", text: "I need the service's health.", callId: "GATE1", url: health, answer: "GATED-DONE" });
      const tool = page.getByRole("region", { name: "agents" }).locator('[data-tool="http_request"]').first();
      await tool.locator(".gate-approval").waitFor({ timeout: 90_000 });
      await tool.getByText("waiting for a person to approve it").waitFor();
      const card = page.getByRole("region", { name: /^approval / });
      await card.waitFor({ timeout: 30_000 });
      await screenshot(page, "18-gated-call");
      await card.getByLabel("comment").fill("health checks are fine");
      await card.getByRole("button", { name: "Approve" }).click();
      const done = await waitRun(agently, run.id, /^(completed|failed)$/, 90_000);
      assert.equal(done.status, "completed", JSON.stringify(done.error));
      assert.equal(done.output.think, "GATED-DONE");
      await tool.locator(".gate-approved").getByText("approved by admin").waitFor({ timeout: 30_000 });
      assert.match(await tool.getByLabel("tool result").innerText(), /200/);
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("approves a gated tool call with edited arguments from its answer form", { timeout: 240_000 }, async () => {
    const health = `${agently.base}/healthz`;
    const { context, page, problems } = await watchedPage(browser);
    try {
      const run = await openGatedCall(page, { workflow: "e2e-edit", topic: "edits", text: "I will check the health as the agent.", callId: "EDIT1", url: `${health}?by=agent`, answer: "EDITED-DONE" });
      const card = page.getByRole("region", { name: /^approval / });
      await card.waitFor({ timeout: 90_000 });
      const form = card.getByLabel("tool call arguments (JSON)");
      assert.match(await form.inputValue(), /by=agent/); // prefilled with the proposed call
      await form.fill(JSON.stringify({ method: "GET", url: `${health}?by=reviewer` }));
      await screenshot(page, "19-gated-call-edited");
      await card.getByRole("button", { name: "Approve with these arguments" }).click();
      const done = await waitRun(agently, run.id, /^(completed|failed)$/, 90_000);
      assert.equal(done.status, "completed", JSON.stringify(done.error));
      assert.equal(done.output.think, "EDITED-DONE");
      const tool = page.getByRole("region", { name: "agents" }).locator('[data-tool="http_request"]').first();
      await tool.locator(".gate-approved").getByText("with edited arguments").waitFor({ timeout: 30_000 });
      assert.match(await tool.getByLabel("edited arguments").innerText(), /by=reviewer/);
      const approvals = await agently.api("GET", "/v1/approvals?status=approved&limit=200");
      const decided = approvals.data.find((a) => a.run_id === run.id);
      assert.match(decided.decision.arguments.url, /by=reviewer$/);
      assert.match(decided.decision.proposed_arguments.url, /by=agent$/);
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("fits a phone: no horizontal scroll on the runs list and a run's page", { timeout: 120_000 }, async () => {
    await agently.api("POST", "/v1/workflows", WAITER);
    const run = await agently.api("POST", "/v1/runs", { workflow: WAITER.name, input: {} });
    await waitRun(agently, run.id, /^waiting$/);
    const { context, page, problems } = await watchedPage(browser, { width: 390, height: 844 });
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    try {
      await signIn(page, agently.base, agently.token);
      await page.locator(`tr[data-run="${run.id}"]`).waitFor();
      assert.equal(await overflow(), 0, "the runs list scrolls sideways");
      await screenshot(page, "14-phone-runs");
      await page.goto(`${agently.base}/runs/${run.id}`);
      await page.getByRole("list", { name: "event log" }).getByText("node.waiting").waitFor();
      await page.locator('[data-node="hold"]').waitFor();
      assert.equal(await overflow(), 0, "the run's page scrolls sideways");
      await screenshot(page, "15-phone-run");
      await agently.api("POST", `/v1/runs/${run.id}/cancel`, {});
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });

  it("works with the keyboard alone: sign in, the runs list, a run", { timeout: 120_000 }, async () => {
    await agently.api("POST", "/v1/workflows", WAITER);
    const run = await agently.api("POST", "/v1/runs", { workflow: WAITER.name, input: {} });
    await waitRun(agently, run.id, /^waiting$/);
    const { context, page, problems } = await watchedPage(browser);
    const focused = () => page.evaluate(() => {
      const e = document.activeElement;
      return e ? `${e.tagName.toLowerCase()}|${e.getAttribute("href") ?? ""}|${e.getAttribute("aria-label") ?? e.textContent?.trim() ?? ""}` : "";
    });
    /** Tabs until the focused element matches, at most n times; the presses it took. */
    async function tabTo(re, n = 60, key = "Tab") {
      for (let i = 1; i <= n; i++) {
        await page.keyboard.press(key);
        if (re.test(await focused())) return i;
      }
      throw new Error(`Tab never reached ${re}; last: ${await focused()}`);
    }
    try {
      await page.goto(agently.base + "/");
      await page.getByLabel("API token").waitFor();
      await tabTo(/^input\|/);
      await page.keyboard.type(agently.token);
      await page.keyboard.press("Enter");
      await page.getByRole("heading", { name: "Runs" }).waitFor();
      await page.locator(`tr[data-run="${run.id}"]`).waitFor();
      // to the run's link, and open it
      await tabTo(new RegExp(`^a\\|/runs/${run.id}\\|`), 80);
      await page.keyboard.press("Enter");
      await page.waitForURL(new RegExp(`/runs/${run.id}$`));
      await page.locator('[data-node="hold"][data-status="waiting"]').waitFor();
      // the graph's node opens with the keyboard too
      await tabTo(/^g\|\|node hold/, 80);
      await page.keyboard.press("Enter");
      await page.getByRole("region", { name: "node hold" }).waitFor();
      // and back to the run's actions: Cancel
      await tabTo(/^button\|\|Cancel$/, 80, "Shift+Tab");
      await screenshot(page, "16-keyboard");
      await page.keyboard.press("Enter");
      await waitRun(agently, run.id, /^canceled$/);
      assert.deepEqual(problems(), []);
    } finally {
      await context.close();
    }
  });
});
