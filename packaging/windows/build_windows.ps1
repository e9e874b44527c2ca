# Windows x64: the one-folder bundle and an Inno Setup installer, CPU or CUDA build of llama.cpp.
#   dist\medgemma-desktop\                              the bundle
#   dist\medgemma-edge-VERSION-windows-x64-VARIANT-setup.exe
# Parallel to packaging/build_linux.sh: same stage step, same spec. Not run by us (no Windows here).
#   powershell -File packaging\windows\build_windows.ps1 -Variant cpu    # or cuda (needs the CUDA toolkit)
param([ValidateSet("cpu", "cuda")][string]$Variant = "cpu")
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")

if (-not (Test-Path .venv)) { python -m venv .venv }
$Python = ".venv\Scripts\python.exe"
& $Python -m pip install --upgrade pip
# The same CPU flags as the Makefile's x86-64 build (AVX2, not -march=native); CUDA for the other variant.
if ($Variant -eq "cuda") { $env:CMAKE_ARGS = "-DGGML_CUDA=ON" }
else { $env:CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON" }
& $Python -m pip install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python==0.3.36"
& $Python -m pip install -e ".[desktop,bundle]"
if ($LASTEXITCODE -ne 0) { throw "pip install failed" }

$Version = & $Python -c "import tomllib; print(tomllib.load(open('pyproject.toml', 'rb'))['project']['version'])"
$Stage = Join-Path (Get-Location) "build\bundle-stage"
& $Python packaging\stage_bundle.py $Stage
if ($LASTEXITCODE -ne 0) { throw "staging failed" }
$env:MEDGEMMA_BUNDLE_STAGE = $Stage
& $Python -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build\pyinstaller packaging\medgemma-desktop.spec
if ($LASTEXITCODE -ne 0) { throw "PyInstaller failed" }

# The same check as the Linux test: the bundled executable loads the model and generates.
$env:QT_QPA_PLATFORM = "offscreen"
$env:MEDGEMMA_HOME = Join-Path $env:RUNNER_TEMP "medgemma-self-test"
& dist\medgemma-desktop\medgemma-desktop-cli.exe --self-test --json | Out-File -Encoding utf8 dist\self-test-$Variant.json
if ($LASTEXITCODE -ne 0) { throw "the bundle's self-test failed" }
Remove-Item Env:QT_QPA_PLATFORM, Env:MEDGEMMA_HOME

# Inno Setup 6 (preinstalled on GitHub's Windows runners; else `choco install innosetup`).
& "${env:ProgramFiles(x86)}\Inno Setup 6\ISCC.exe" "/DAppVersion=$Version" "/DVariant=$Variant" packaging\windows\medgemma-edge.iss
if ($LASTEXITCODE -ne 0) { throw "Inno Setup failed" }
