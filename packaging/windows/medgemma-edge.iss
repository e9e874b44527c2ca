; Inno Setup script: installs dist\medgemma-desktop\ (the PyInstaller bundle) per user, no admin rights.
; iscc /DAppVersion=0.1.0 /DVariant=cpu packaging\windows\medgemma-edge.iss
#ifndef AppVersion
  #error Pass /DAppVersion=VERSION (from pyproject.toml)
#endif
#ifndef Variant
  #define Variant "cpu"
#endif

[Setup]
AppId={{6A0F4C1E-3B7D-4E55-9C2A-7D1E5B0C9F21}
AppName=MedGemma Edge
AppVersion={#AppVersion}
AppPublisher=MedGemma Edge
DefaultDirName={autopf}\MedGemma Edge
DefaultGroupName=MedGemma Edge
PrivilegesRequired=lowest
PrivilegesRequiredOverridesAllowed=dialog
ArchitecturesAllowed=x64compatible
ArchitecturesInstallIn64BitMode=x64compatible
OutputDir=..\..\dist
OutputBaseFilename=medgemma-edge-{#AppVersion}-windows-x64-{#Variant}-setup
SetupIconFile=..\icons\medgemma-edge.ico
UninstallDisplayIcon={app}\medgemma-desktop.exe
LicenseFile=..\..\build\bundle-stage\models\GEMMA_TERMS.txt
Compression=lzma2/fast
SolidCompression=no
WizardStyle=modern

[Files]
Source: "..\..\dist\medgemma-desktop\*"; DestDir: "{app}"; Flags: recursesubdirs ignoreversion

[Icons]
Name: "{group}\MedGemma Edge"; Filename: "{app}\medgemma-desktop.exe"
Name: "{autodesktop}\MedGemma Edge"; Filename: "{app}\medgemma-desktop.exe"; Tasks: desktopicon

[Tasks]
Name: "desktopicon"; Description: "Create a desktop shortcut"; Flags: unchecked

[Run]
Filename: "{app}\medgemma-desktop.exe"; Description: "Start MedGemma Edge"; Flags: nowait postinstall skipifsilent
