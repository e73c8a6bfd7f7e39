"""The MLflow UI as a person sees it: headless Chromium (Debian's chromium + chromium-driver,
installed by `make`) on `peft-search ui` serving a small finished study.

Screenshots go to a temporary folder; `PEFT_SCREENSHOTS=docs make test` (or pytest) refreshes
the ones the README shows.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from search.cluster.local import free_port
from search.mlflow_server import wait_until_serving
from tests.studies import run_study

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
TIMEOUT = 90  # the UI's first page load on a busy 2-core machine


@pytest.fixture(scope="module")
def browser_study(tmp_path_factory, minivtab):
    """digits with linear (one point) and lora (two points), three epochs evaluated each epoch."""
    return run_study({
        "name": "browser-study", "backbone": "tiny_vit_b16_in21k", "data_root": str(minivtab),
        "datasets": ["digits"], "methods": ["linear", "lora"],
        "train": {"epoch": 3, "warmup_epoch": 0, "pretrained": False, "eval_freq": 1},
        "spaces": {"linear": {"lr": {"grid": [0.01]}},
                   "lora": {"lr": {"grid": [0.001, 0.01]}, "lora_bottleneck": {"grid": [4]}}},
        "search": {"sampler": "grid", "num_samples": "grid", "max_concurrent": 1}},
        tmp_path_factory.mktemp("browser_study"))


@pytest.fixture(scope="module")
def ui_url(browser_study):
    """`peft-search ui` on the study; the URL it prints."""
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "search.cli", "ui", str(browser_study), "--port", str(port)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"}, start_new_session=True)
    try:
        url = ui.stdout.readline().split("open ")[1].split()[0]
        wait_until_serving(f"http://127.0.0.1:{port}", 180, ui)
        yield url
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()


@pytest.fixture(scope="module")
def chrome():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver packages (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1100"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = Path(os.environ.get("PEFT_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def runs(browser_study):
    """The study's runs by phase, from its own store: (run id, run name, parent id)."""
    from mlflow.tracking import MlflowClient

    from search.study_folder import tracking_source
    uri, experiment = tracking_source(browser_study)
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by_phase = {}
    for run in found:
        by_phase.setdefault(run.data.tags["phase"], []).append(
            (run.info.run_id, run.info.run_name, run.data.tags.get("mlflow.parentRunId")))
    return by_phase


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By
    return driver.find_element(By.TAG_NAME, "body").text


def open_page(driver, url: str, *texts: str) -> str:
    """Load ``url`` and wait until the page shows every one of ``texts``; the page's text."""
    from selenium.webdriver.support.ui import WebDriverWait
    driver.get(url)
    WebDriverWait(driver, TIMEOUT).until(lambda d: all(t in page_text(d) for t in texts),
                                         f"{url} never showed {texts}")
    close_assistant(driver)
    return page_text(driver)


def close_assistant(driver) -> None:
    """MLflow's assistant side panel covers a third of every page: close it for the screenshots."""
    from selenium.webdriver.common.by import By
    for button in driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Close']"):
        if button.is_displayed():
            button.click()


def base_of(url: str) -> str:
    return url.split("#")[0]


def test_experiment_opens_on_its_cells_with_trials_nested(chrome, ui_url, runs, shots):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    text = open_page(chrome, ui_url, "digits/linear", "digits/lora")
    assert "No data available" not in text and "Traces\n0" not in text  # not the GenAI overview
    trial_names = [name for _, name, _ in runs["tune"] + runs["final"]]
    assert not any(name in text for name in trial_names), "trials should sit folded under their cell"
    expanders = "button[data-component-id*='runnamecellrenderer']"
    for i in range(len(runs["cell"])):  # found again after each click: the grid re-renders
        chrome.find_elements(By.CSS_SELECTOR, expanders)[i].click()
    WebDriverWait(chrome, TIMEOUT).until(lambda d: all(n in page_text(d) for n in trial_names),
                                         f"expanding the cells never showed {trial_names}")
    rows = chrome.find_elements(By.CSS_SELECTOR, ".ag-pinned-left-cols-container .ag-row")
    rows = sorted(rows, key=lambda row: int(row.get_attribute("row-index")))  # as shown, top to bottom
    names = [line for row in rows for line in row.text.splitlines() if line.startswith("digits/")]
    # each cell's trials right under it
    for cell_id, cell_name, _ in runs["cell"]:
        children = [name for _, name, parent in runs["tune"] + runs["final"] if parent == cell_id]
        start = names.index(cell_name)
        assert sorted(names[start + 1:start + 1 + len(children)]) == sorted(children), names
    chrome.save_screenshot(str(shots / "mlflow-ui-experiment.png"))


def test_trial_page_shows_its_parameters_and_per_epoch_validation_chart(chrome, ui_url, runs, shots):
    run_id, name, _ = next(r for r in runs["tune"] if r[1].startswith("digits/lora"))
    experiment_page = ui_url.split("?")[0]
    text = open_page(chrome, f"{experiment_page}/{run_id}?workflowType=machine_learning",
                     name, "Parameters", "lora_bottleneck")
    lines = text.splitlines()
    for key, value in (("lora_bottleneck", "4"), ("epoch", "3"), ("batch_size", "64"), ("method", "lora")):
        assert lines[lines.index(key) + 1] == value, (key, lines[lines.index(key):lines.index(key) + 2])
    chrome.save_screenshot(str(shots / "mlflow-ui-trial.png"))
    chrome.set_window_size(1600, 2200)  # charts draw only once on screen: all of them, val_top1 included
    text = open_page(chrome, f"{experiment_page}/{run_id}/model-metrics?workflowType=machine_learning",
                     f"{name} (val_top1)", f"{name} (train_loss)")
    chart = text.splitlines()
    x_axis = chart[chart.index("val_top1") + 1:chart.index(f"{name} (val_top1)")]
    assert {"1", "2", "3"} <= set(x_axis), x_axis  # one point per evaluated epoch
    chrome.save_screenshot(str(shots / "mlflow-ui-trial-metrics.png"))
    chrome.set_window_size(1600, 1100)


def test_compare_view_lines_a_cells_trials_up_by_parameter(chrome, ui_url, runs, shots):
    from urllib.parse import quote
    lora = [r for r in runs["tune"] if r[1].startswith("digits/lora")]
    experiment_id = ui_url.split("#/experiments/")[1].split("/")[0]
    ids = json.dumps([run_id for run_id, _, _ in lora], separators=(",", ":"))
    url = (f"{base_of(ui_url)}#/compare-runs?runs={quote(ids)}&experiments={quote(json.dumps([experiment_id]))}"
           "&workflowType=machine_learning")
    text = open_page(chrome, url, "Comparing 2 Runs", "Parameters", "lora_bottleneck")
    table = {line.split(" ")[0]: line.split(" ")[1:] for line in text.splitlines() if " " in line}
    assert table["lora_bottleneck"] == ["4", "4"], table  # a row per parameter, a column per trial
    assert sorted(table["lr"]) == ["0.001", "0.01"], table
    assert all(name in text for _, name, _ in lora)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    heading = chrome.find_elements(By.XPATH, "//*[normalize-space(text())='Parameters']")[-1]
    chrome.execute_script("arguments[0].scrollIntoView()", heading)  # the table, not only the plot
    chrome.find_elements(By.CSS_SELECTOR, "[role='switch']")[0].click()  # parameters: show diff only

    def parameter_rows(driver) -> list[str]:
        section = page_text(driver).split("Show diff only", 1)[1].split("Metrics", 1)[0]
        return [line.split(" ")[0] for line in section.splitlines() if " " in line]
    WebDriverWait(chrome, TIMEOUT).until(lambda d: "lora_bottleneck" not in parameter_rows(d),
                                         "'Show diff only' kept the parameters the trials share")
    assert "lr" in parameter_rows(chrome) and "batch_size" not in parameter_rows(chrome)
    chrome.save_screenshot(str(shots / "mlflow-ui-compare.png"))
